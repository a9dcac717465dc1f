//! Sending one HTTP request for a destination: pacing, sending, classifying the answer.

use std::time::SystemTime;

use super::pacer::{Patience, Ticket};
use super::retry::{self, Failure};
use super::{DeliveryError, Pacer};
use crate::config::HttpConfig;

/// A destination's HTTP client (keep-alive connections, timeouts) and its shared pacer.
pub struct HttpSender {
    client: reqwest::Client,
    pacer: Pacer,
    /// `concurrency` bounds the requests in flight to the destination, whichever passes (the
    /// daemon runs one per computation) send them.
    in_flight: tokio::sync::Semaphore,
    /// Credentials this destination sends, scrubbed from any answer that echoes them.
    secrets: Vec<String>,
}

impl HttpSender {
    pub fn new(config: &HttpConfig) -> anyhow::Result<HttpSender> {
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .pool_max_idle_per_host(config.concurrency)
            .user_agent(crate::USER_AGENT)
            // A redirect is never an acknowledgement: a 3xx is that request's answer.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        let in_flight = tokio::sync::Semaphore::new(config.concurrency);
        Ok(HttpSender { client, pacer: Pacer::new(config.max_requests_per_second), in_flight, secrets: Vec::new() })
    }

    /// The same sender, scrubbing `secrets` (and their trailing-padding-free forms) from the
    /// error bodies it keeps.
    pub fn scrubbing(mut self, secrets: &[&str]) -> HttpSender {
        let forms = secrets.iter().flat_map(|s| [s.to_string(), s.trim_end_matches('=').to_string()]);
        self.secrets.extend(forms);
        self
    }

    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// Sends `request` when the pacer allows (waiting no longer than `patience`); the body on
    /// 2xx. A 429 slows the whole destination.
    pub async fn send(
        &self,
        request: reqwest::RequestBuilder,
        patience: &Patience<'_>,
    ) -> Result<Vec<u8>, DeliveryError> {
        let _slot = self.in_flight.acquire().await.expect("never closed");
        let ticket = self.pacer.acquire(patience).await?;
        let response = request.send().await.map_err(retry::from_transport)?;
        let status = response.status();
        let Some(failure) = retry::classify(status) else {
            self.pacer.succeeded(ticket);
            let body = response.bytes().await.map_err(retry::from_transport)?;
            return Ok(body.to_vec());
        };
        let headers = response.headers().clone();
        let body = response.text().await.unwrap_or_default();
        Err(self.refused(ticket, status, &headers, &body, failure))
    }

    /// As `send`, through `pool`.
    pub async fn send_h1(
        &self,
        pool: &super::h1::H1Pool,
        request: hyper::Request<http_body_util::Full<bytes::Bytes>>,
        patience: &Patience<'_>,
    ) -> Result<(), DeliveryError> {
        let _slot = self.in_flight.acquire().await.expect("never closed");
        let ticket = self.pacer.acquire(patience).await?;
        let answer = pool.send(request).await.map_err(|e| retry::from_h1(&e))?;
        let Some(failure) = retry::classify(answer.status) else {
            self.pacer.succeeded(ticket);
            return Ok(());
        };
        Err(self.refused(ticket, answer.status, &answer.headers, &String::from_utf8_lossy(&answer.body), failure))
    }

    /// The error for a refused request; a 429 slows the whole destination (once per congestion
    /// event: the pacer tells from `ticket` whether it was sent before the last slow-down).
    fn refused(
        &self,
        ticket: Ticket,
        status: reqwest::StatusCode,
        headers: &reqwest::header::HeaderMap,
        body: &str,
        failure: Failure,
    ) -> DeliveryError {
        // The body and a redirect's `Location` may both echo what was sent: the whole message
        // is scrubbed.
        let mut error = retry::from_response(status, headers, body, failure);
        error.message = crate::redact::scrub(&error.message, &self.secrets);
        if failure == Failure::Throttled {
            self.pacer.throttled(ticket, retry::retry_after(headers, SystemTime::now()));
        }
        error
    }
}
