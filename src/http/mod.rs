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
    let body = response.text().await.unwrap_or_default();
    Err(answer::refused(status, &headers, &body, failure, secrets))
}
