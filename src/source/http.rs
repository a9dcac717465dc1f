//! HTTP snapshots: NDJSON streamed line by line, or JSON pages
//! `{"members": [{"user_id": ..., "value": ...}], "next": URL or null}` (a `Link: <...>;
//! rel="next"` header is followed too), each streamed member by member (see `page`). The
//! snapshot counts only once its last page arrived. A next page on another scheme is refused;
//! one of another origin is read without the source's `Authorization`.
//!
//! This runs on the snapshot's blocking thread and drives the async client through the
//! runtime's handle, so that the NDJSON body can be read like any other file.

use std::io::Read;
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, LINK};
use tokio::runtime::Handle;

use super::SnapshotError;
use super::member::{Push, Rules, read_ndjson};
use super::page::read_page;
use crate::config::{HttpFormat, Secret};
use crate::http::{self, Backoff, Failure};
use crate::redact::redact_url;

/// A source's retries: 100 ms doubling to 6.4 s, at least half of each window (one reader has
/// no crowd of retries to spread).
const RETRY: Backoff = Backoff { base: Duration::from_millis(100), max: Duration::from_millis(6400), least_share: 0.5 };

/// What an HTTP source needs to be read.
pub struct HttpSource<'a> {
    pub url: &'a url::Url,
    pub format: HttpFormat,
    pub authorization: Option<&'a Secret>,
    pub timeout: Duration,
    pub max_retries: u32,
    pub max_pages: u64,
}

impl HttpSource<'_> {
    /// What a server may echo back of what it was sent to `url`, to scrub from its answers.
    fn secrets(&self, url: &url::Url) -> Vec<String> {
        let mut secrets = crate::redact::url_secrets(self.url);
        secrets.extend(crate::redact::url_secrets(url));
        secrets.extend(self.authorization.map(|a| crate::redact::header_secrets(a.expose())).unwrap_or_default());
        secrets
    }
}

pub fn read(handle: &Handle, source: &HttpSource, rules: Rules, push: &mut Push) -> Result<(), SnapshotError> {
    let client = http::reading_client(source.timeout)
        .map_err(|e| SnapshotError::new(&redact_url(source.url.as_str()), None, None, e.without_url().to_string()))?;
    match source.format {
        HttpFormat::Ndjson => {
            let name = redact_url(source.url.as_str());
            let response = get(handle, &client, source, source.url)?;
            let body = BodyReader::new(handle, response, source.timeout);
            read_ndjson(
                &name,
                std::io::BufReader::with_capacity(1 << 16, super::member::LineLimit::new(body)),
                rules,
                push,
            )
        }
        HttpFormat::Json => read_pages(handle, &client, source, rules, push),
    }
}

/// Reads JSON pages from the first, following `next` (or a `Link` header) to the last.
fn read_pages(
    handle: &Handle,
    client: &reqwest::Client,
    source: &HttpSource,
    rules: Rules,
    push: &mut Push,
) -> Result<(), SnapshotError> {
    let mut next = Some(source.url.clone());
    let mut seen: std::collections::HashMap<url::Url, u64> = std::collections::HashMap::new();
    let mut page_number = 0;
    while let Some(url) = next.take() {
        page_number += 1;
        let name = format!("{} (page {page_number})", redact_url(url.as_str()));
        if let Some(first) = seen.insert(url.clone(), page_number) {
            let message = format!("pages {first} and {page_number} are the same URL: the pages loop");
            return Err(SnapshotError::new(&name, None, Some("next"), message));
        }
        if page_number > source.max_pages {
            let message =
                format!("more than max_pages = {} pages; raise it if the source is that big", source.max_pages);
            return Err(SnapshotError::new(&name, None, Some("next"), message));
        }
        let response = get(handle, client, source, &url)?;
        // A relative `next` is relative to the page as it was served, after any redirect.
        let base = response.url().clone();
        let link = next_link(&response, &base);
        let in_body = read_page(&name, BodyReader::new(handle, response, source.timeout), rules, push)?;
        next = match in_body.or(link) {
            Some(n) => {
                let mut n = base
                    .join(&n)
                    .map_err(|e| SnapshotError::new(&name, None, Some("next"), format!("{:?}: {e}", redact_url(&n))))?;
                // A fragment is never sent: pages told apart by one alone are the same page.
                n.set_fragment(None);
                if n == url {
                    return Err(SnapshotError::new(&name, None, Some("next"), "the next page is this page"));
                }
                if n.scheme() != source.url.scheme() {
                    let message =
                        format!("the next page is on {}, the source on {}: refused", n.scheme(), source.url.scheme());
                    return Err(SnapshotError::new(&name, None, Some("next"), message));
                }
                Some(n)
            }
            None => None,
        };
    }
    Ok(())
}

/// GET with retries on transient failures (408, 429, 5xx but 501, no answer).
fn get(
    handle: &Handle,
    client: &reqwest::Client,
    source: &HttpSource,
    url: &url::Url,
) -> Result<reqwest::Response, SnapshotError> {
    let mut attempt = 0;
    loop {
        // `client` bounds each silence, not the whole request (see `http::reading_client`).
        // Credentials go to the configured origin only: a page may point anywhere. The
        // configured header is the whole `Authorization`: a URL's userinfo does not add another.
        let request = match source.authorization.filter(|_| url.origin() == source.url.origin()) {
            Some(auth) => {
                let mut bare = url.clone();
                let _ = (bare.set_username(""), bare.set_password(None));
                client.get(bare).header(AUTHORIZATION, auth.expose())
            }
            None => client.get(url.clone()),
        };
        let error = match handle.block_on(http::send(request, &source.secrets(url))) {
            Ok(response) => return Ok(response),
            Err(e) => e,
        };
        if error.failure == Failure::Permanent || attempt >= source.max_retries {
            let tries = if attempt > 0 { format!(" (after {attempt} retries)") } else { String::new() };
            return Err(SnapshotError::new(&redact_url(url.as_str()), None, None, format!("{}{tries}", error.message)));
        }
        std::thread::sleep(RETRY.delay(attempt, error.retry_after));
        attempt += 1;
    }
}

/// The `rel="next"` target of a `Link` header, if any.
fn next_link(response: &reqwest::Response, base: &url::Url) -> Option<String> {
    let header = response.headers().get(LINK)?.to_str().ok()?;
    header.split(',').find_map(|part| {
        let (target, params) = part.split_once(';')?;
        let is_next = params.split(';').any(|p| matches!(p.trim(), "rel=\"next\"" | "rel=next"));
        let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
        is_next.then(|| base.join(target).map(|u| u.to_string()).unwrap_or_else(|_| target.to_string()))
    })
}

/// A response body read chunk by chunk from the blocking thread.
struct BodyReader<'a> {
    handle: &'a Handle,
    response: reqwest::Response,
    chunk: Vec<u8>,
    at: usize,
    timeout: Duration,
}

impl<'a> BodyReader<'a> {
    fn new(handle: &'a Handle, response: reqwest::Response, timeout: Duration) -> Self {
        BodyReader { handle, response, chunk: Vec::new(), at: 0, timeout }
    }
}

impl Read for BodyReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.chunk.len() {
            let next = self.handle.block_on(async { tokio::time::timeout(self.timeout, self.response.chunk()).await });
            match next {
                Err(_) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        format!("no data for {:?}", self.timeout),
                    ));
                }
                Ok(Err(e)) => return Err(std::io::Error::other(e.without_url())),
                Ok(Ok(None)) => return Ok(0),
                Ok(Ok(Some(bytes))) => {
                    self.chunk.clear();
                    self.chunk.extend_from_slice(&bytes);
                    self.at = 0;
                }
            }
        }
        let n = buf.len().min(self.chunk.len() - self.at);
        buf[..n].copy_from_slice(&self.chunk[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}
