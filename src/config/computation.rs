//! The `[[audience]]` and `[[computed_trait]]` tables: each a validated `Computation`, its key
//! unique, its source resolved, its guard and schedule decided.

use std::ops::Range;

use super::raw::{RawComputation, RawSource, RawSync, infer_format};
use super::{
    Computation, ConfigError, ConfigFile, Guard, Kind, Secret, Source, line_of, parse_http_url, positive_duration,
    schedule,
};
use crate::key::snake_case;

/// Every declared computation, in order, validated; keys must be distinct.
pub(super) fn parse_all(
    file: &ConfigFile,
    declared: impl Iterator<Item = (Kind, RawComputation)>,
    sync: &RawSync,
    default_cron: &str,
) -> Result<Vec<Computation>, ConfigError> {
    let mut computations: Vec<(Computation, Range<usize>)> = Vec::new();
    for (kind, c) in declared {
        let name_span = c.name.span();
        let computation = parse(file, kind, c, sync, default_cron)?;
        if let Some((other, other_span)) = computations.iter().find(|(o, _)| o.key == computation.key) {
            let message = format!(
                "{}.name: {:?} has key {:?}, which {:?} (line {}) already uses; set a distinct `key`",
                kind.as_str(),
                computation.name,
                computation.key,
                other.name,
                line_of(file.text, other_span.start)
            );
            return Err(file.err(Some(name_span), message));
        }
        computations.push((computation, name_span));
    }
    Ok(computations.into_iter().map(|(c, _)| c).collect())
}

/// One computation of kind `kind`.
fn parse(
    file: &ConfigFile,
    kind: Kind,
    c: RawComputation,
    sync: &RawSync,
    default_cron: &str,
) -> Result<Computation, ConfigError> {
    let table = kind.as_str();
    let name_span = c.name.span();
    let name = c.name.into_inner();
    if name.trim().is_empty() {
        return Err(file.err(Some(name_span), format!("{table}.name: must not be empty")));
    }
    let key = key(file, table, &name, name_span.clone(), c.key)?;
    let source_err = |m: String| file.err(Some(name_span.clone()), format!("{table} {name:?}: source.{m}"));
    let source = source(file, c.source).map_err(source_err)?;
    let ratio = match c.max_exit_ratio.as_ref().or(sync.max_exit_ratio.as_ref()) {
        Some(r) if !(0.0..=1.0).contains(r.get_ref()) => {
            return Err(file.err(Some(r.span()), "max_exit_ratio: must be between 0 and 1".into()));
        }
        Some(r) => *r.get_ref(),
        None => 0.5,
    };
    let guard = Guard { max_exit_ratio: ratio, min_members: c.guard_min_members.unwrap_or(sync.guard_min_members) };
    let cron = match c.schedule {
        Some(own) => {
            schedule::parse(own.get_ref()).map_err(|m| file.err(Some(own.span()), format!("{table}.schedule: {m}")))?;
            own.into_inner()
        }
        None => default_cron.to_string(),
    };
    let (allow_structured, max_user_id_bytes) = (c.allow_structured, c.max_user_id_bytes);
    Ok(Computation { name, key, kind, cron, source, guard, allow_structured, max_user_id_bytes })
}

/// The computation's key: its own `key`, checked, or its name snake_cased.
fn key(
    file: &ConfigFile,
    table: &str,
    name: &str,
    name_span: Range<usize>,
    own: Option<toml::Spanned<String>>,
) -> Result<String, ConfigError> {
    let key = match own {
        Some(k) => {
            let valid =
                !k.get_ref().is_empty() && k.get_ref().chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_');
            if !valid {
                let message = format!("{table}.key: {:?} must be ASCII letters, digits and '_'", k.get_ref());
                return Err(file.err(Some(k.span()), message));
            }
            k.into_inner()
        }
        None => snake_case(name),
    };
    if key.is_empty() {
        return Err(file.err(Some(name_span), format!("{table}.name: {name:?} gives an empty key; set `key`")));
    }
    Ok(key)
}

/// The computation's source, paths resolved and secrets read; an error says which field.
fn source(file: &ConfigFile, raw: RawSource) -> Result<Source, String> {
    Ok(match raw {
        RawSource::File(s) => {
            let (format, gzip) = infer_format(&s.path, s.format).map_err(|m| format!("path: {m}"))?;
            Source::File {
                path: file.resolve(&s.path),
                format,
                gzip,
                ready_file: s.ready_file.as_deref().map(|p| file.resolve(p)),
            }
        }
        RawSource::Http(h) => Source::Http {
            url: parse_http_url(&h.url).map_err(|m| format!("url: {m}"))?,
            format: h.format,
            authorization: match &h.auth_header_env {
                Some(var) => Some(Secret::new(
                    (file.env)(var)
                        .ok_or_else(|| format!("auth_header_env: the environment variable {var} is not set"))?,
                )),
                None => None,
            },
            timeout: positive_duration(h.timeout_secs).ok_or("timeout_secs: must be positive")?,
            max_retries: h.max_retries,
            max_pages: h.max_pages,
        },
        RawSource::Sql(q) => {
            let url = match (q.url, q.url_env) {
                (Some(u), None) => u,
                (None, Some(var)) => {
                    (file.env)(&var).ok_or_else(|| format!("url_env: the environment variable {var} is not set"))?
                }
                _ => return Err("url: give exactly one of url and url_env".into()),
            };
            if !(url.starts_with("sqlite:") || url.starts_with("postgres:") || url.starts_with("postgresql:")) {
                return Err("url: only sqlite:// and postgres:// databases are supported".into());
            }
            Source::Sql { url: Secret::new(url), query: q.query }
        }
    })
}
