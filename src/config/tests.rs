use std::path::Path;

use super::*;

const GOOD: &str = r#"
[state]
path = "state/sync.db"

[destination]
type = "contentstack"
project_uid = "proj"
concurrency = 8

[[audience]]
name = "Order Completed Last 30 Days"
source = { type = "file", path = "snapshots/order_completed.csv" }

[[computed_trait]]
name = "Lifetime Value"
key = "ltv"
source = { type = "file", path = "/abs/ltv.ndjson.gz" }
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(Path::new("/etc/audience-sync/config.toml"), text)
}

fn error(text: &str) -> String {
    parse(text).expect_err("config should be rejected").to_string()
}

#[test]
fn good_config_resolves_keys_paths_and_defaults() {
    let c = parse(GOOD).unwrap();
    match &c.state {
        StateLocation::File(path) => assert_eq!(path, Path::new("/etc/audience-sync/state/sync.db")),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.cron, "0 0 */2 * * *");
    let keys: Vec<_> = c.computations.iter().map(|c| (c.key.as_str(), c.kind)).collect();
    assert_eq!(keys, [("order_completed_last_30_days", Kind::Audience), ("ltv", Kind::ComputedTrait)]);
    match &c.computations[1].source {
        Source::File { path, format, gzip, .. } => {
            assert_eq!(path, Path::new("/abs/ltv.ndjson.gz"));
            assert_eq!(*format, SnapshotFormat::Ndjson);
            assert!(*gzip);
        }
        other => panic!("unexpected source {other:?}"),
    }
    match &c.destination {
        Destination::Contentstack(d) => {
            assert_eq!(d.edge_api_base_url.as_str(), "https://personalize-edge.contentstack.com/");
            assert_eq!(d.http.concurrency, 8);
            assert_eq!(d.http.request_timeout, std::time::Duration::from_secs(30));
        }
        other => panic!("unexpected destination {other:?}"),
    }
}

#[test]
fn unknown_field_names_field_and_line() {
    let e = error(&GOOD.replace("concurrency = 8", "concurency = 8"));
    assert!(e.starts_with("/etc/audience-sync/config.toml:8:"), "{e}");
    assert!(e.contains("concurency"), "{e}");
}

#[test]
fn field_of_another_destination_type_is_rejected() {
    let e = error(&GOOD.replace("concurrency = 8", "path = \"out.ndjson\""));
    assert!(e.contains(":8: destination.path: not a field of a contentstack destination"), "{e}");
}

#[test]
fn missing_project_uid_is_named() {
    let e = error(&GOOD.replace("project_uid = \"proj\"\n", ""));
    assert!(e.contains("destination.project_uid: missing"), "{e}");
}

#[test]
fn bad_url_is_named_with_line() {
    let e = error(
        &GOOD.replace("project_uid = \"proj\"", "project_uid = \"proj\"\nedge_api_base_url = \"personalize-edge\""),
    );
    assert!(e.contains(":8: destination.edge_api_base_url:"), "{e}");
    let e = error(&GOOD.replace("project_uid = \"proj\"", "project_uid = \"proj\"\nedge_api_base_url = \"ftp://x\""));
    assert!(e.contains("must be an http(s) URL"), "{e}");
}

#[test]
fn a_bad_url_is_named_without_its_secrets() {
    let bad = "edge_api_base_url = \"ftp://me:pw1@x/?token=tk1\"";
    let e = error(&GOOD.replace("project_uid = \"proj\"", &format!("project_uid = \"proj\"\n{bad}")));
    assert!(e.contains("ftp://***@x/?token=***") && !e.contains("pw1") && !e.contains("tk1"), "{e}");
}

#[test]
fn unknown_destination_type_is_named() {
    let e = error(&GOOD.replace("type = \"contentstack\"", "type = \"mixpanel\""));
    assert!(e.contains(":6: destination.type: unknown destination \"mixpanel\""), "{e}");
}

#[test]
fn empty_key_is_an_error() {
    let e = error(&GOOD.replace("Order Completed Last 30 Days", "!!!"));
    assert!(e.contains(":11: audience.name: \"!!!\" gives an empty key"), "{e}");
}

#[test]
fn duplicate_keys_name_both_computations() {
    let e = error(&GOOD.replace("key = \"ltv\"", "key = \"order_completed_last_30_days\""));
    assert!(e.contains(":15: computed_trait.name: \"Lifetime Value\" has key \"order_completed_last_30_days\""), "{e}");
    assert!(e.contains("\"Order Completed Last 30 Days\" (line 11)"), "{e}");
}

#[test]
fn malformed_key_is_rejected() {
    let e = error(&GOOD.replace("key = \"ltv\"", "key = \"life time\""));
    assert!(e.contains(":16: computed_trait.key:"), "{e}");
}

#[test]
fn unknown_snapshot_extension_asks_for_format() {
    let e = error(&GOOD.replace("order_completed.csv", "order_completed.txt"));
    assert!(e.contains("set format = \"csv\" or \"ndjson\""), "{e}");
    let c = parse(&GOOD.replace("order_completed.csv\" }", "order_completed.txt\", format = \"csv\" }")).unwrap();
    assert!(matches!(c.computations[0].source, Source::File { format: SnapshotFormat::Csv, gzip: false, .. }));
}

#[test]
fn unknown_field_in_source_is_rejected() {
    let e = error(&GOOD.replace("path = \"snapshots/order_completed.csv\"", "path = \"a.csv\", sep = \";\""));
    assert!(e.contains("sep"), "{e}");
}

#[test]
fn select_rejects_unknown_keys() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.select(&["ltv".into()]).unwrap().len(), 1);
    let e = c.select(&["nope".into()]).unwrap_err().to_string();
    assert!(e.contains("\"nope\"") && e.contains("ltv"), "{e}");
}

#[test]
fn five_field_cron_is_a_config_error_that_says_so() {
    let e = error(&GOOD.replace("[destination]", "[schedule]\ncron = \"0 */2 * * *\"\n\n[destination]"));
    assert!(e.contains(":6: schedule.cron: \"0 */2 * * *\" has 5 fields"), "{e}");
}

#[test]
fn per_computation_schedule_overrides_the_default() {
    let c = parse(&GOOD.replace("key = \"ltv\"", "key = \"ltv\"\nschedule = \"0 30 * * * *\"")).unwrap();
    assert_eq!(c.computations[0].cron, "0 0 */2 * * *");
    assert_eq!(c.computations[1].cron, "0 30 * * * *");
    let e = error(&GOOD.replace("key = \"ltv\"", "key = \"ltv\"\nschedule = \"bad\""));
    assert!(e.contains("computed_trait.schedule:"), "{e}");
}

#[test]
fn metrics_listen_must_be_an_address() {
    let c = parse(&format!("{GOOD}\n[metrics]\nlisten = \"127.0.0.1:9464\"\n")).unwrap();
    assert_eq!(c.metrics_listen.unwrap().port(), 9464);
    let e = error(&format!("{GOOD}\n[metrics]\nlisten = \"localhost\"\n"));
    assert!(e.contains("metrics.listen:"), "{e}");
}

#[test]
fn keep_history_days_is_off_by_default_and_a_positive_number_of_days() {
    assert_eq!(parse(GOOD).unwrap().keep_history_days, None);
    let with =
        |days: &str| GOOD.replace("path = \"state/sync.db\"", &format!("path = \"x.db\"\nkeep_history_days = {days}"));
    assert_eq!(parse(&with("7")).unwrap().keep_history_days, Some(7));
    for bad in ["0", "-1", "4294967296", "1.5", "\"7\""] {
        let e = error(&with(bad));
        assert!(e.starts_with("/etc/audience-sync/config.toml:4:"), "{bad}: {e}");
    }
    assert!(error(&with("0")).contains("state.keep_history_days: 0 is not a number of days"));
}

#[test]
fn url_env_puts_the_state_in_postgresql_and_never_shows_the_password() {
    let text = GOOD.replace("path = \"state/sync.db\"", "url_env = \"STATE_URL\"");
    let url = "postgres://sync:hunter2@db.internal/audience_sync";
    let with = |value: Option<&str>| {
        let value = value.map(str::to_string);
        Config::parse_with_env(Path::new("/etc/audience-sync/config.toml"), &text, &move |name: &str| {
            if name == "STATE_URL" { value.clone() } else { None }
        })
    };
    let c = with(Some(url)).unwrap();
    assert!(c.state.is_postgres());
    assert_eq!(c.state.describe(), "postgres://***@db.internal/audience_sync");
    assert!(!format!("{c:?}").contains("hunter2"));
    let e = with(None).unwrap_err().to_string();
    assert!(e.starts_with("/etc/audience-sync/config.toml:3:"), "{e}");
    assert!(e.contains("state.url_env: the environment variable STATE_URL is not set"), "{e}");
    let e = with(Some("mysql://sync:hunter2@db/x")).unwrap_err().to_string();
    assert!(e.contains("does not hold a postgres:// URL") && !e.contains("hunter2"), "{e}");
    let both = GOOD.replace("path = \"state/sync.db\"", "path = \"x.db\"\nurl_env = \"STATE_URL\"");
    assert!(error(&both).contains("state: give one of path (SQLite) and url_env (PostgreSQL)"));
}

#[test]
fn a_delivery_shard_of_no_rows_is_refused_naming_its_line() {
    let text = GOOD.replacen("[state]", "[sync]\ndelivery_shard_rows = 0\n\n[state]", 1);
    let e = error(&text);
    assert!(e.contains("config.toml:3:") && e.contains("delivery_shard_rows"), "{e}");
    assert_eq!(parse(GOOD).unwrap().delivery_shard_rows, 10_000);
}

#[test]
fn segment_destinations_with_other_write_keys_are_other_destinations_and_no_key_is_shown() {
    // Review finding: a worker sending to another Segment source behind the same endpoint
    // delivered the shards of a pass to it.
    let text = GOOD.replace(
        "type = \"contentstack\"\nproject_uid = \"proj\"",
        "type = \"segment\"\nwrite_key_env = \"SEGMENT_KEY\"",
    );
    let identity = |key: &'static str| {
        let env = move |name: &str| (name == "SEGMENT_KEY").then(|| key.to_string());
        Config::parse_with_env(Path::new("/etc/audience-sync/config.toml"), &text, &env).unwrap().destination.identity()
    };
    let (one, other) = (identity("wk_workspace_one"), identity("wk_workspace_two"));
    assert_ne!(one, other);
    assert_eq!(one, identity("wk_workspace_one"));
    assert!(!one.contains("wk_workspace") && !other.contains("wk_workspace"), "{one} / {other}");
}
