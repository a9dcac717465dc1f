//! Contentstack Personalize Edge API: `PATCH {edge_api_base_url}/user-attributes`, one request
//! per user holding all of that user's pending attributes (DESIGN §5).

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};

use super::h1::H1Pool;
use super::{AttributeManager, DeliveryError, HttpSender, Patience, RowResults, UserUpdate, for_every_row};
use crate::config::ContentstackConfig;
use crate::metrics::Metrics;

/// The header Personalize reads the user from, and the legacy one Segment's destination sends.
pub const USER_UID_HEADER: &str = "x-cs-personalize-user-uid";
pub const LEGACY_USER_UID_HEADER: &str = "x-cs-eclipse-user-uid";
pub const PROJECT_UID_HEADER: &str = "x-project-uid";

pub struct Contentstack {
    http: HttpSender,
    url: reqwest::Url,
    /// Straight through hyper, unless a proxy is set in the environment (see `h1`).
    direct: Option<Direct>,
    project_uid: HeaderValue,
    concurrency: usize,
    attributes: Option<AttributeManager>,
}

/// The updates' connections, and the path their requests go to.
struct Direct {
    pool: H1Pool,
    path: hyper::Uri,
}

impl Contentstack {
    pub fn new(config: &ContentstackConfig, metrics: &Metrics) -> anyhow::Result<Contentstack> {
        let url = super::endpoint(&config.edge_api_base_url, &["user-attributes"])?;
        let project_uid = HeaderValue::from_str(&config.project_uid)
            .map_err(|_| anyhow::anyhow!("destination.project_uid cannot be sent as a header"))?;
        let attributes = match &config.attributes {
            Some(a) => {
                let metrics = metrics.destination("contentstack_management");
                Some(AttributeManager::new(a, &config.project_uid, &config.http, metrics)?)
            }
            None => None,
        };
        let direct = if proxy_set(&url) {
            tracing::info!("a proxy is set in the environment: Contentstack updates go through it");
            None
        } else {
            Some(Direct {
                pool: H1Pool::new(&url, config.http.connect_timeout, config.http.request_timeout)?,
                path: url[url::Position::BeforePath..].parse()?,
            })
        };
        Ok(Contentstack {
            http: HttpSender::new(&config.http, &config.edge_api_base_url, metrics.destination("contentstack"))?,
            url,
            direct,
            project_uid,
            concurrency: config.http.concurrency,
            attributes,
        })
    }

    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    pub fn attributes(&self) -> Option<&AttributeManager> {
        self.attributes.as_ref()
    }

    /// The JSON body: a flat object of the user's pending attributes.
    pub fn body(update: &UserUpdate) -> Result<Vec<u8>, DeliveryError> {
        serde_json::to_vec(&update.traits()?).map_err(|e| DeliveryError::permanent(e.to_string()))
    }

    /// One request per user, in turn (delivery gives one user per call).
    pub async fn send(&self, updates: &[UserUpdate], patience: &Patience<'_>) -> RowResults {
        let mut results = Vec::new();
        for update in updates {
            let result = self.send_one(update, patience).await;
            results.extend(for_every_row(std::slice::from_ref(update), &result));
        }
        results
    }

    async fn send_one(&self, update: &UserUpdate, patience: &Patience<'_>) -> Result<(), DeliveryError> {
        let user = HeaderValue::from_str(&update.user_id)
            .map_err(|_| DeliveryError::permanent("user_id cannot be sent as an HTTP header (control characters)"))?;
        let mut headers = HeaderMap::with_capacity(5);
        headers.insert(PROJECT_UID_HEADER, self.project_uid.clone());
        headers.insert(USER_UID_HEADER, user.clone());
        headers.insert(LEGACY_USER_UID_HEADER, user);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let body = Self::body(update)?;
        let Some(direct) = &self.direct else {
            let request = self.http.client().patch(self.url.clone()).headers(headers).body(body);
            return self.http.send(request, patience).await.map(drop);
        };
        let mut request = hyper::Request::new(http_body_util::Full::new(bytes::Bytes::from(body)));
        *request.method_mut() = reqwest::Method::PATCH;
        *request.uri_mut() = direct.path.clone();
        *request.headers_mut() = headers;
        self.http.send_h1(&direct.pool, request, patience).await
    }
}

/// Whether reqwest would send requests to `url` through a proxy named in the environment
/// (it reads these variables; `NO_PROXY` is left to it).
fn proxy_set(url: &reqwest::Url) -> bool {
    let scheme = if url.scheme() == "https" { "https_proxy" } else { "http_proxy" };
    [scheme, "all_proxy"].iter().any(|name| {
        [name.to_string(), name.to_uppercase()].iter().any(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()))
    })
}
