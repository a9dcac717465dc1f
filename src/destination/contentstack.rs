//! Contentstack Personalize Edge API: `PATCH {edge_api_base_url}/user-attributes`, one request
//! per user holding all of that user's pending attributes (DESIGN §5).

use std::num::NonZeroU32;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::header::{CONTENT_TYPE, HeaderValue};

use super::{DeliveryError, UserUpdate};
use crate::config::ContentstackConfig;

/// The header Personalize reads the user from, and the legacy one Segment's destination sends.
pub const USER_UID_HEADER: &str = "x-cs-personalize-user-uid";
pub const LEGACY_USER_UID_HEADER: &str = "x-cs-eclipse-user-uid";
pub const PROJECT_UID_HEADER: &str = "x-project-uid";

/// How much of an error body is kept in `last_error`.
const ERROR_SNIPPET_CHARS: usize = 200;

pub struct Contentstack {
    client: reqwest::Client,
    url: reqwest::Url,
    project_uid: HeaderValue,
    concurrency: usize,
    limiter: Option<DefaultDirectRateLimiter>,
}

impl Contentstack {
    pub fn new(config: &ContentstackConfig) -> anyhow::Result<Contentstack> {
        let client = reqwest::Client::builder()
            .connect_timeout(config.connect_timeout)
            .timeout(config.request_timeout)
            .pool_max_idle_per_host(config.concurrency)
            .user_agent(concat!("audience-sync/", env!("CARGO_PKG_VERSION")))
            .build()?;
        let base = config.edge_api_base_url.as_str().trim_end_matches('/');
        let url = reqwest::Url::parse(&format!("{base}/user-attributes"))?;
        let project_uid = HeaderValue::from_str(&config.project_uid)
            .map_err(|_| anyhow::anyhow!("destination.project_uid cannot be sent as a header"))?;
        let limiter = config
            .max_requests_per_second
            .and_then(NonZeroU32::new)
            .map(|rps| RateLimiter::direct(Quota::per_second(rps)));
        Ok(Contentstack {
            client,
            url,
            project_uid,
            concurrency: config.concurrency,
            limiter,
        })
    }

    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// The JSON body: a flat object of the user's pending attributes.
    pub fn body(update: &UserUpdate) -> Result<Vec<u8>, DeliveryError> {
        serde_json::to_vec(&update.traits()?).map_err(|e| DeliveryError::new(e.to_string()))
    }

    pub async fn send(&self, update: &UserUpdate) -> Result<(), DeliveryError> {
        let user = HeaderValue::from_str(&update.user_id).map_err(|_| {
            DeliveryError::new("user_id cannot be sent as an HTTP header (control characters)")
        })?;
        let body = Self::body(update)?;
        if let Some(limiter) = &self.limiter {
            limiter.until_ready().await;
        }
        let response = self
            .client
            .patch(self.url.clone())
            .header(PROJECT_UID_HEADER, self.project_uid.clone())
            .header(USER_UID_HEADER, user.clone())
            .header(LEGACY_USER_UID_HEADER, user)
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| DeliveryError::new(format!("request failed: {}", error_chain(&e))))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let text = response.text().await.unwrap_or_default();
        let snippet: String = text.chars().take(ERROR_SNIPPET_CHARS).collect();
        Err(DeliveryError::new(format!(
            "HTTP {}: {}",
            status.as_u16(),
            snippet.trim()
        )))
    }
}

/// An error with its causes, on one line ("error sending request: connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}
