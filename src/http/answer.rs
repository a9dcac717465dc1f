//! Which answers are worth retrying: the one place that classifies HTTP outcomes, for sources
//! and destinations alike (DESIGN §5).
//!
//! 408, 429 and 5xx other than 501 are transient, as are connection errors and timeouts;
//! every other non-2xx is permanent: a source's load fails, a destination's rows wait for the
//! next pass. 429 is singled out as throttling: it slows the whole destination down.

use std::time::{Duration, SystemTime};

use reqwest::StatusCode;
use reqwest::header::{HeaderMap, RETRY_AFTER};

use crate::redact::{redact_url, scrub};

/// What kind of failure a request's (or a delivery's) error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// Retrying will not help within this pass (4xx other than 408 and 429, 501, bad data).
    Permanent,
    /// May succeed if tried again after a while (408, 5xx, connection errors, timeouts).
    Transient,
    /// The destination asks us to slow down (429).
    Throttled,
    /// Never sent: delivery stopped, or the destination is paused past the pass's retry budget.
    /// The row stays pending without an attempt counted.
    Unsent,
}

/// A request that failed: what to say, its kind, and how long the server asked us to wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpError {
    pub message: String,
    pub failure: Failure,
    pub retry_after: Option<Duration>,
    /// The answer's status; `None` when there was no answer.
    pub status: Option<u16>,
}

/// Longest `Retry-After` honoured; a longer one is treated as this (the pass budget still rules).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// How much of an error body is kept in `last_error`.
const ERROR_SNIPPET_CHARS: usize = 200;

/// The failure kind of a non-2xx status, or `None` for success.
pub fn classify(status: StatusCode) -> Option<Failure> {
    match status.as_u16() {
        200..=299 => None,
        429 => Some(Failure::Throttled),
        408 => Some(Failure::Transient),
        501 => Some(Failure::Permanent),
        500..=599 => Some(Failure::Transient),
        _ => Some(Failure::Permanent),
    }
}

/// `Retry-After` as a delay: delta-seconds or an HTTP date (RFC 9110 §10.2.3).
fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    let delay = match value.parse::<u64>() {
        Ok(secs) => Duration::from_secs(secs),
        Err(_) => {
            let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
            let at = SystemTime::UNIX_EPOCH + Duration::from_secs(u64::try_from(at.timestamp()).ok()?);
            at.duration_since(now).unwrap_or(Duration::ZERO)
        }
    };
    Some(delay.min(MAX_RETRY_AFTER))
}

/// The error for a non-2xx answer: status, the first bytes of the body, and its kind. The body
/// and a redirect's `Location` may both echo what was sent: the whole message is scrubbed of
/// `secrets`.
pub fn refused(status: StatusCode, headers: &HeaderMap, body: &str, failure: Failure, secrets: &[String]) -> HttpError {
    // Scrubbed whole, then cut: a secret cut in half would no longer be recognised.
    let snippet: String = scrub(body, secrets).chars().take(ERROR_SNIPPET_CHARS).collect();
    let location = match headers.get(reqwest::header::LOCATION).filter(|_| status.is_redirection()) {
        Some(to) => format!(" (redirect to {}, not followed)", redact_url(&String::from_utf8_lossy(to.as_bytes()))),
        None => String::new(),
    };
    HttpError {
        message: scrub(&format!("HTTP {}{location}: {}", status.as_u16(), snippet.trim()), secrets),
        failure,
        retry_after: retry_after(headers, SystemTime::now()),
        status: Some(status.as_u16()),
    }
}

/// The HTTP status of a refusal, read back from its message (which `refused` begins with
/// `HTTP NNN`); `None` for any other failure (no answer came, or the row could not be sent).
pub fn refusal_status(message: &str) -> Option<u16> {
    let digits = message.strip_prefix("HTTP ")?.get(..3)?;
    digits.bytes().all(|b| b.is_ascii_digit()).then(|| digits.parse().ok()).flatten()
}

/// The error for a request that got no answer: connection refused, reset, timeout. reqwest
/// prints the URL whole, credentials and all: it is shown redacted instead.
pub fn from_transport(e: reqwest::Error) -> HttpError {
    let what = if e.is_timeout() { "timed out" } else { "failed" };
    let failure = if e.is_builder() || e.is_redirect() { Failure::Permanent } else { Failure::Transient };
    let url = e.url().map(|u| format!(" ({})", redact_url(u.as_str()))).unwrap_or_default();
    let message = format!("request {what}{url}: {}", error_chain(&e.without_url()));
    HttpError { message, failure, retry_after: None, status: None }
}

/// An error with its causes, on one line.
pub(crate) fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use reqwest::header::HeaderValue;

    use super::*;

    #[test]
    fn status_classes() {
        let kind = |s: u16| classify(StatusCode::from_u16(s).unwrap());
        assert_eq!(kind(200), None);
        assert_eq!(kind(204), None);
        assert_eq!(kind(429), Some(Failure::Throttled));
        for s in [408, 500, 502, 503, 504, 599] {
            assert_eq!(kind(s), Some(Failure::Transient), "{s}");
        }
        for s in [400, 401, 403, 404, 409, 413, 422, 501] {
            assert_eq!(kind(s), Some(Failure::Permanent), "{s}");
        }
    }

    #[test]
    fn a_redirect_is_named_without_its_secrets() {
        let mut h = HeaderMap::new();
        h.insert(reqwest::header::LOCATION, HeaderValue::from_static("https://u:pw@h/x?sig=s1&n=1"));
        let e = refused(StatusCode::TEMPORARY_REDIRECT, &h, "", Failure::Permanent, &[]);
        assert_eq!(e.message.trim_end(), "HTTP 307 (redirect to https://***@h/x?sig=***&n=1, not followed):");
    }

    #[test]
    fn a_refusals_status_is_read_back_from_its_message() {
        let e = refused(StatusCode::UNPROCESSABLE_ENTITY, &HeaderMap::new(), "bad", Failure::Permanent, &[]);
        assert_eq!(refusal_status(&e.message), Some(422));
        assert_eq!(refusal_status(&format!("{} (retries exhausted after 5 retries)", e.message)), Some(422));
        for other in ["request timed out (http://h/): operation timed out", "HTTP", "HTTP 4x0", ""] {
            assert_eq!(refusal_status(other), None, "{other}");
        }
    }

    #[test]
    fn retry_after_seconds_and_http_date() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h, SystemTime::now()), None);
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h, SystemTime::now()), Some(Duration::from_secs(7)));
        h.insert(RETRY_AFTER, HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"));
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_470); // 10 s before
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(10)));
        let later = now + Duration::from_secs(60);
        assert_eq!(retry_after(&h, later), Some(Duration::ZERO));
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h, now), None);
    }
}
