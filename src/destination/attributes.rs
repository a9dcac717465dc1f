//! Contentstack custom attributes: Personalize accepts a user attribute only if the project
//! defines it. With `create_attributes`, missing keys are created through the management API
//! (`GET`/`POST {management_api_base_url}/attributes`), which allows 10 requests a second.

use std::collections::HashSet;

use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde::{Deserialize, Serialize};

use super::{DeliveryError, HttpSender, Patience};
use crate::config::{AttributeCreation, HttpConfig};
use crate::metrics::DestinationMetrics;

/// The management API's limit, per organization.
const MANAGEMENT_REQUESTS_PER_SECOND: u32 = 10;

pub struct AttributeManager {
    http: HttpSender,
    url: reqwest::Url,
    authorization: HeaderValue,
    project_uid: String,
    organization_uid: Option<String>,
}

#[derive(Deserialize)]
struct Attribute {
    key: String,
}

#[derive(Serialize)]
struct NewAttribute<'a> {
    name: &'a str,
    key: &'a str,
    description: String,
}

impl AttributeManager {
    pub fn new(
        config: &AttributeCreation,
        project_uid: &str,
        http: &HttpConfig,
        metrics: DestinationMetrics,
    ) -> anyhow::Result<AttributeManager> {
        let mut authorization = HeaderValue::from_str(&format!("Bearer {}", config.token.expose()))
            .map_err(|_| anyhow::anyhow!("the management token cannot be sent as a header"))?;
        authorization.set_sensitive(true);
        let http = HttpConfig {
            concurrency: 1,
            max_requests_per_second: Some(MANAGEMENT_REQUESTS_PER_SECOND),
            ..http.clone()
        };
        Ok(AttributeManager {
            http: HttpSender::new(&http, &config.management_api_base_url, metrics)?.scrubbing(&[config.token.expose()]),
            url: super::endpoint(&config.management_api_base_url, &["attributes"])?,
            authorization,
            project_uid: project_uid.to_string(),
            organization_uid: config.organization_uid.clone(),
        })
    }

    fn request(&self, method: reqwest::Method) -> reqwest::RequestBuilder {
        let mut r = self
            .http
            .client()
            .request(method, self.url.clone())
            .header(AUTHORIZATION, self.authorization.clone())
            .header("x-project-uid", &self.project_uid);
        if let Some(org) = &self.organization_uid {
            r = r.header("organization_uid", org);
        }
        r
    }

    /// The keys of the project's attributes.
    pub async fn list(&self, patience: &Patience<'_>) -> Result<HashSet<String>, DeliveryError> {
        let body = self.http.send(self.request(reqwest::Method::GET), patience).await?;
        let attributes: Vec<Attribute> = serde_json::from_slice(&body)
            .map_err(|e| DeliveryError::permanent(format!("unexpected answer listing attributes: {e}")))?;
        Ok(attributes.into_iter().map(|a| a.key).collect())
    }

    /// Creates the attribute `key`, named after the computation.
    pub async fn create(&self, key: &str, name: &str, patience: &Patience<'_>) -> Result<(), DeliveryError> {
        let body = NewAttribute { name, key, description: format!("audience-sync: {name}") };
        let body = serde_json::to_vec(&body).map_err(|e| DeliveryError::permanent(e.to_string()))?;
        let request = self.request(reqwest::Method::POST).header(CONTENT_TYPE, "application/json").body(body);
        self.http.send(request, patience).await.map(drop)
    }
}
