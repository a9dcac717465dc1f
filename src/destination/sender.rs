//! Sending one HTTP request for a destination: pacing, sending, classifying the answer.

use super::DeliveryError;
use super::h1::{H1Pool, TransportError};
use crate::config::HttpConfig;
use crate::http::{self, Failure, HttpError, Pacer, Patience, Ticket, answer};
use crate::metrics::DestinationMetrics;

/// A destination's HTTP client (keep-alive connections, timeouts) and its shared pacer.
pub struct HttpSender {
    client: reqwest::Client,
    pacer: Pacer,
    /// `concurrency` bounds the requests in flight to the destination, whichever passes (the
    /// daemon runs one per computation) send them.
    in_flight: tokio::sync::Semaphore,
    /// Credentials this destination sends, scrubbed from any answer that echoes them.
    secrets: Vec<String>,
    metrics: DestinationMetrics,
}

impl HttpSender {
    /// A sender to the destination configured as `base`, whose requests are counted in
    /// `metrics`; the secrets of `base` (userinfo, secret parameters) are scrubbed from answers.
    pub fn new(config: &HttpConfig, base: &url::Url, metrics: DestinationMetrics) -> anyhow::Result<HttpSender> {
        let client = http::delivering_client(config)?;
        let in_flight = tokio::sync::Semaphore::new(config.concurrency);
        let pacer = Pacer::new(config.max_requests_per_second).reporting_to(metrics.rate());
        let secrets = crate::redact::url_secrets(base);
        Ok(HttpSender { client, pacer, in_flight, secrets, metrics })
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
        patience.may_send().await?;
        let sent = self.metrics.sending();
        let answer = http::send(request, &self.secrets).await;
        sent.answered(match &answer {
            Ok(response) => Some(response.status().as_u16()),
            Err(e) => e.status,
        });
        let response = answer.map_err(|e| self.failed(ticket, e))?;
        self.pacer.succeeded(ticket);
        let body = response.bytes().await.map_err(answer::from_transport)?;
        Ok(body.to_vec())
    }

    /// As `send`, through `pool`.
    pub async fn send_h1(
        &self,
        pool: &H1Pool,
        request: hyper::Request<http_body_util::Full<bytes::Bytes>>,
        patience: &Patience<'_>,
    ) -> Result<(), DeliveryError> {
        let _slot = self.in_flight.acquire().await.expect("never closed");
        let ticket = self.pacer.acquire(patience).await?;
        patience.may_send().await?;
        let sent = self.metrics.sending();
        let answer = pool.send(request, patience.tenure).await;
        sent.answered(answer.as_ref().ok().map(|a| a.status.as_u16()));
        let answer = answer.map_err(from_h1)?;
        let Some(failure) = answer::classify(answer.status) else {
            self.pacer.succeeded(ticket);
            return Ok(());
        };
        let body = String::from_utf8_lossy(&answer.body);
        Err(self.failed(ticket, answer::refused(answer.status, &answer.headers, &body, failure, &self.secrets)))
    }

    /// A refused request's error; a 429 slows the whole destination (once per congestion
    /// event: the pacer tells from `ticket` whether it was sent before the last slow-down).
    fn failed(&self, ticket: Ticket, error: HttpError) -> DeliveryError {
        if error.failure == Failure::Throttled {
            self.pacer.throttled(ticket, error.retry_after);
        }
        error.into()
    }
}

/// The error for a request of Contentstack's own HTTP/1.1 client that got no answer.
fn from_h1(e: TransportError) -> HttpError {
    let what = if e.timed_out { "timed out" } else { "failed" };
    let message = format!("request {what}: {}", e.message);
    HttpError { message, failure: Failure::Transient, retry_after: None, status: None }
}
