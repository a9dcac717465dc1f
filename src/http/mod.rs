//! The one HTTP layer of sources and destinations: the clients and their redirect policies,
//! what an answer means (`answer`), how long to wait before trying again (`backoff`), and a
//! destination's pace (`pacer`). URLs and secrets stay out of messages through `crate::redact`.

pub mod answer;
mod backoff;
mod pacer;

use std::time::Duration;

pub use answer::{Failure, HttpError};
pub use backoff::Backoff;
pub use pacer::{Pacer, Patience, Ticket, beyond_budget};

use crate::config::HttpConfig;

/// What every HTTP request of ours says it comes from.
pub const USER_AGENT: &str = concat!("audience-sync/", env!("CARGO_PKG_VERSION"));

/// A client that reads (a source). No timeout over a whole request: a big snapshot streams
/// for longer than any; `timeout` bounds connecting and each silence instead. Redirects are
/// followed, but never to another scheme.
pub fn reading_client(timeout: Duration) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(timeout)
        .read_timeout(timeout)
        .user_agent(USER_AGENT)
        .redirect(same_scheme_redirects())
        .build()
}

/// A client that delivers (a destination), keeping a connection a request in flight.
pub fn delivering_client(config: &HttpConfig) -> reqwest::Result<reqwest::Client> {
    reqwest::Client::builder()
        .connect_timeout(config.connect_timeout)
        .timeout(config.request_timeout)
        .pool_max_idle_per_host(config.concurrency)
        .user_agent(USER_AGENT)
        // A redirect is never an acknowledgement: a 3xx is that request's answer.
        .redirect(reqwest::redirect::Policy::none())
        .build()
}

/// Reading may follow redirects, but never to another scheme (an `https` source sent to `http`
/// would give its `Authorization` away in clear).
fn same_scheme_redirects() -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(|attempt| {
        let from = attempt.previous().first().map(|u| u.scheme().to_string()).unwrap_or_default();
        if attempt.url().scheme() != from {
            let message = format!("redirected from {from} to {}: refused", attempt.url().scheme());
            attempt.error(message)
        } else if attempt.previous().len() > 10 {
            attempt.error("more than 10 redirects")
        } else {
            attempt.follow()
        }
    })
}

/// Sends `request`: its response if the status is 2xx, else the classified error, an error
/// page scrubbed of `secrets`.
pub async fn send(request: reqwest::RequestBuilder, secrets: &[String]) -> Result<reqwest::Response, HttpError> {
    let response = request.send().await.map_err(answer::from_transport)?;
    let status = response.status();
    let Some(failure) = answer::classify(status) else { return Ok(response) };
    let headers = response.headers().clone();
    let body = read_at_most(response, MAX_ANSWER_BODY).await;
    Err(answer::refused(status, &headers, &body, failure, secrets))
}

/// The most of an answer's body read to describe it: it is only shown (cut shorter) in an
/// error, and a hostile one must not take the memory.
pub const MAX_ANSWER_BODY: usize = 64 * 1024;

/// The first `limit` bytes of `response`'s body, as text; what could not be read is left out.
async fn read_at_most(mut response: reqwest::Response, limit: usize) -> String {
    let mut read = Vec::new();
    while read.len() < limit {
        match response.chunk().await {
            Ok(Some(chunk)) => read.extend_from_slice(&chunk[..chunk.len().min(limit - read.len())]),
            Ok(None) | Err(_) => break,
        }
    }
    String::from_utf8_lossy(&read).into_owned()
}
