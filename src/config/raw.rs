//! The serde shape of config.toml, before validation. Spans are kept where a later check
//! needs to point at a line.

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub state: RawState,
    #[serde(default)]
    pub schedule: RawSchedule,
    #[serde(default)]
    pub sync: RawSync,
    pub metrics: Option<RawMetrics>,
    pub destination: RawDestination,
    #[serde(default)]
    pub audience: Vec<RawComputation>,
    #[serde(default)]
    pub computed_trait: Vec<RawComputation>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawState {
    /// A SQLite file (the default: `audience-sync.db`).
    pub path: Option<Spanned<String>>,
    /// The environment variable holding a PostgreSQL URL.
    pub url_env: Option<Spanned<String>>,
    /// Record every delivery answered, and keep it this many days.
    pub keep_history_days: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSchedule {
    pub cron: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMetrics {
    pub listen: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSync {
    /// Memory for sorting a snapshot before the diff; beyond it, sorted runs spill to temp files.
    #[serde(default = "default_sort_buffer_mb")]
    pub sort_buffer_mb: usize,
    /// How long a pass's lease on a computation lasts without a heartbeat.
    #[serde(default = "default_lease_ttl_secs")]
    pub lease_ttl_secs: u64,
    /// On SIGTERM, how long requests in flight may take to finish.
    #[serde(default = "default_shutdown_grace_secs")]
    pub shutdown_grace_secs: u64,
    /// Default mass-exit guard of every computation.
    pub max_exit_ratio: Option<Spanned<f64>>,
    #[serde(default = "default_guard_min_members")]
    pub guard_min_members: u64,
    /// PostgreSQL: a delivery of more rows than this is cut into shards of about this many,
    /// which every worker watching the pass claims.
    pub delivery_shard_rows: Option<Spanned<u64>>,
}

fn default_guard_min_members() -> u64 {
    100
}

impl Default for RawSync {
    fn default() -> Self {
        RawSync {
            sort_buffer_mb: default_sort_buffer_mb(),
            lease_ttl_secs: default_lease_ttl_secs(),
            shutdown_grace_secs: default_shutdown_grace_secs(),
            max_exit_ratio: None,
            guard_min_members: default_guard_min_members(),
            delivery_shard_rows: None,
        }
    }
}

fn default_lease_ttl_secs() -> u64 {
    60
}

fn default_shutdown_grace_secs() -> u64 {
    30
}

fn default_sort_buffer_mb() -> usize {
    64
}

/// `[destination]`, flat: one table whose `type` decides which fields apply. (A serde-tagged
/// enum would lose the spans that let errors name a line.)
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDestination {
    #[serde(rename = "type")]
    pub kind: Spanned<String>,
    // contentstack
    pub edge_api_base_url: Option<Spanned<String>>,
    pub project_uid: Option<Spanned<String>>,
    pub create_attributes: Option<Spanned<bool>>,
    pub management_api_base_url: Option<Spanned<String>>,
    pub management_token_env: Option<Spanned<String>>,
    pub organization_uid: Option<Spanned<String>>,
    // segment
    pub endpoint: Option<Spanned<String>>,
    pub write_key_env: Option<Spanned<String>>,
    pub events: Option<Spanned<String>>,
    // every HTTP destination
    pub concurrency: Option<Spanned<usize>>,
    pub max_requests_per_second: Option<Spanned<u32>>,
    pub connect_timeout_secs: Option<Spanned<f64>>,
    pub request_timeout_secs: Option<Spanned<f64>>,
    // every destination
    pub max_retries: Option<Spanned<u32>>,
    pub retry_base_delay_ms: Option<Spanned<u64>>,
    pub retry_max_delay_secs: Option<Spanned<f64>>,
    pub retry_budget_secs: Option<Spanned<f64>>,
    pub quarantine_after: Option<Spanned<u32>>,
    // file
    pub path: Option<Spanned<String>>,
}

impl RawDestination {
    /// The fields that are set, with their spans, for "does not apply to this type" errors.
    pub fn set_fields(&self) -> Vec<(&'static str, std::ops::Range<usize>)> {
        fn span<T>(v: &Option<Spanned<T>>) -> Option<std::ops::Range<usize>> {
            v.as_ref().map(|v| v.span())
        }
        let all = [
            ("edge_api_base_url", span(&self.edge_api_base_url)),
            ("project_uid", span(&self.project_uid)),
            ("create_attributes", span(&self.create_attributes)),
            ("management_api_base_url", span(&self.management_api_base_url)),
            ("management_token_env", span(&self.management_token_env)),
            ("organization_uid", span(&self.organization_uid)),
            ("endpoint", span(&self.endpoint)),
            ("write_key_env", span(&self.write_key_env)),
            ("events", span(&self.events)),
            ("concurrency", span(&self.concurrency)),
            ("max_requests_per_second", span(&self.max_requests_per_second)),
            ("connect_timeout_secs", span(&self.connect_timeout_secs)),
            ("request_timeout_secs", span(&self.request_timeout_secs)),
            ("max_retries", span(&self.max_retries)),
            ("retry_base_delay_ms", span(&self.retry_base_delay_ms)),
            ("retry_max_delay_secs", span(&self.retry_max_delay_secs)),
            ("retry_budget_secs", span(&self.retry_budget_secs)),
            ("quarantine_after", span(&self.quarantine_after)),
            ("path", span(&self.path)),
        ];
        all.into_iter().filter_map(|(name, s)| s.map(|s| (name, s))).collect()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawComputation {
    pub name: Spanned<String>,
    pub key: Option<Spanned<String>>,
    /// This computation's own cron schedule, instead of `[schedule].cron`.
    pub schedule: Option<Spanned<String>>,
    /// Hold back a snapshot that would remove more than this share of the members.
    pub max_exit_ratio: Option<Spanned<f64>>,
    /// ... when there are at least this many.
    pub guard_min_members: Option<u64>,
    /// Accept arrays and objects as computed-trait values.
    #[serde(default)]
    pub allow_structured: bool,
    /// The longest user_id accepted, in bytes: a longer one fails the load.
    #[serde(default = "default_max_user_id_bytes")]
    pub max_user_id_bytes: usize,
    pub source: RawSource,
}

fn default_max_user_id_bytes() -> usize {
    1024
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(super) enum RawSource {
    File(RawFileSource),
    Http(RawHttpSource),
    Sql(RawSqlSource),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFileSource {
    pub path: String,
    pub format: Option<SnapshotFormat>,
    /// A marker the exporter writes once the snapshot is complete.
    pub ready_file: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHttpSource {
    pub url: String,
    #[serde(default = "default_http_format")]
    pub format: HttpFormat,
    /// The environment variable holding a whole `Authorization` header value.
    pub auth_header_env: Option<String>,
    #[serde(default = "default_http_timeout")]
    pub timeout_secs: f64,
    #[serde(default = "default_http_retries")]
    pub max_retries: u32,
    /// Most pages one load of a paged JSON source may follow.
    #[serde(default = "default_max_pages")]
    pub max_pages: u64,
}

fn default_max_pages() -> u64 {
    100_000
}

fn default_http_format() -> HttpFormat {
    HttpFormat::Ndjson
}

fn default_http_timeout() -> f64 {
    60.0
}

fn default_http_retries() -> u32 {
    3
}

/// What an HTTP source answers: NDJSON (streamed) or JSON pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HttpFormat {
    Ndjson,
    Json,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSqlSource {
    pub url: Option<String>,
    /// The environment variable holding the database URL (which may carry a password).
    pub url_env: Option<String>,
    pub query: String,
}

/// How a snapshot file is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotFormat {
    Csv,
    Ndjson,
}

/// The format of a snapshot file: `format` when given, else from the extension
/// (`.csv`, `.ndjson`, `.jsonl`), after a `.gz` that means gzip.
pub(super) fn infer_format(path: &str, format: Option<SnapshotFormat>) -> Result<(SnapshotFormat, bool), String> {
    let gzip = path.ends_with(".gz");
    let stem = path.strip_suffix(".gz").unwrap_or(path);
    if let Some(f) = format {
        return Ok((f, gzip));
    }
    let ext = std::path::Path::new(stem).extension().and_then(|e| e.to_str()).unwrap_or("");
    match ext.to_ascii_lowercase().as_str() {
        "csv" => Ok((SnapshotFormat::Csv, gzip)),
        "ndjson" | "jsonl" => Ok((SnapshotFormat::Ndjson, gzip)),
        _ => Err(format!("cannot tell the format of {path:?} from its extension; set format = \"csv\" or \"ndjson\"")),
    }
}
