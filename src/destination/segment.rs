//! Segment's HTTP Tracking API: `POST {endpoint}/v1/batch` with Basic auth (DESIGN §5).
//!
//! One identify per (user, computation), as Engage sends to a user-property destination, and
//! optionally track events (`Audience Entered` / `Audience Exited`, `Trait Computed`) as it sends
//! to an event destination. Each message has a deterministic `messageId` derived from the change
//! (computation, user, value, and when the value was decided), so a change re-sent after a crash
//! is deduplicated by Segment while a later change of the same user gets a new id.

use std::collections::BTreeMap;

use base64::Engine;
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use serde::Serialize;
use serde_json::Value;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

use super::{DeliveryError, HttpSender, Patience, PendingValue, RowResults, UserUpdate, raw_json};
use crate::config::{Kind, SegmentConfig, SegmentEvents};
use crate::metrics::Metrics;

/// Users per delivery call; their events are packed into as few batches as the limits allow.
/// An identify is about 220 bytes, so a call of one computation fits one batch of 475 KB and
/// `concurrency` calls are that many requests in flight.
pub const USERS_PER_CALL: usize = 1000;
/// Segment's limits: events and bytes per batch, bytes per event.
pub const MAX_BATCH_EVENTS: usize = 2500;
pub const MAX_BATCH_BYTES: usize = 475_000;
pub const MAX_EVENT_BYTES: usize = 32 * 1024;
/// `{"batch":[` and `]}` around the events.
const BATCH_OVERHEAD: usize = 12;

pub struct Segment {
    http: HttpSender,
    url: reqwest::Url,
    authorization: HeaderValue,
    events: SegmentEvents,
    concurrency: usize,
}

#[derive(Serialize)]
struct Message<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<&'static str>,
    #[serde(rename = "userId")]
    user_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    traits: Option<BTreeMap<&'a str, &'a RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    properties: Option<serde_json::Map<String, Value>>,
    context: Context<'a>,
    #[serde(rename = "messageId")]
    message_id: String,
    timestamp: &'a str,
}

#[derive(Serialize)]
struct Context<'a> {
    personas: Personas<'a>,
}

#[derive(Serialize)]
struct Personas<'a> {
    computation_class: &'static str,
    computation_key: &'a str,
}

/// `{endpoint}/v1/batch`, a query the endpoint holds kept after the path. The write key is the
/// credential: userinfo in the endpoint is dropped, never sent (reqwest would send it as Basic
/// auth in place of the key).
impl Segment {
    pub fn new(config: &SegmentConfig, metrics: &Metrics) -> anyhow::Result<Segment> {
        let url = super::endpoint(&config.endpoint, &["v1", "batch"])?;
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{}:", config.write_key.expose()));
        let mut authorization = HeaderValue::from_str(&format!("Basic {token}"))?;
        authorization.set_sensitive(true);
        Ok(Segment {
            http: HttpSender::new(&config.http, &config.endpoint, metrics.destination("segment"))?
                .scrubbing(&[config.write_key.expose(), &token]),
            url,
            authorization,
            events: config.events,
            concurrency: config.http.concurrency,
        })
    }

    pub fn concurrency(&self) -> usize {
        self.concurrency
    }

    /// The messages for one row, encoded.
    pub fn encode(&self, user_id: &str, v: &PendingValue) -> Result<Vec<Vec<u8>>, DeliveryError> {
        let raw = raw_json(v)?;
        let class = v.kind.as_str();
        let context = || Context { personas: Personas { computation_class: class, computation_key: &v.key } };
        let mut out = Vec::new();
        if matches!(self.events, SegmentEvents::Identify | SegmentEvents::Both) {
            out.push(Message {
                kind: "identify",
                event: None,
                user_id,
                traits: Some(BTreeMap::from([(v.key.as_str(), raw)])),
                properties: None,
                context: context(),
                message_id: message_id("identify", user_id, v),
                timestamp: &v.changed_at,
            });
        }
        if matches!(self.events, SegmentEvents::Track | SegmentEvents::Both) {
            let value: Value = serde_json::from_str(raw.get()).map_err(|e| DeliveryError::permanent(e.to_string()))?;
            let (event, id_field) = match v.kind {
                Kind::Audience if value == Value::Bool(true) => ("Audience Entered", "audience_key"),
                Kind::Audience => ("Audience Exited", "audience_key"),
                Kind::ComputedTrait => ("Trait Computed", "trait_key"),
            };
            let mut properties = serde_json::Map::new();
            properties.insert(id_field.to_string(), Value::String(v.key.clone()));
            properties.insert(v.key.clone(), value);
            out.push(Message {
                kind: "track",
                event: Some(event),
                user_id,
                traits: None,
                properties: Some(properties),
                context: context(),
                message_id: message_id("track", user_id, v),
                timestamp: &v.changed_at,
            });
        }
        out.iter()
            .map(|m| {
                let bytes = serde_json::to_vec(m).map_err(|e| DeliveryError::permanent(e.to_string()))?;
                if bytes.len() > MAX_EVENT_BYTES {
                    return Err(DeliveryError::permanent(format!(
                        "the {} event for {:?} is {} bytes, over Segment's limit of {MAX_EVENT_BYTES}",
                        m.kind,
                        v.key,
                        bytes.len()
                    )));
                }
                Ok(bytes)
            })
            .collect()
    }

    /// Encodes every row, packs the events into batches within Segment's limits (a row's events
    /// in one), and sends the batches in turn.
    pub async fn send(&self, updates: &[UserUpdate], patience: &Patience<'_>) -> RowResults {
        let rows: Vec<(&str, &PendingValue)> =
            updates.iter().flat_map(|u| u.values.iter().map(move |v| (u.user_id.as_str(), v))).collect();
        let mut results: RowResults = vec![Ok(()); rows.len()];
        let mut events: Vec<(usize, Vec<u8>)> = Vec::new();
        for (i, (user, v)) in rows.iter().enumerate() {
            match self.encode(user, v) {
                Ok(encoded) => events.extend(encoded.into_iter().map(|e| (i, e))),
                Err(e) => results[i] = Err(e),
            }
        }
        for batch in pack(&events) {
            let mut body = Vec::with_capacity(MAX_BATCH_BYTES);
            body.extend_from_slice(b"{\"batch\":[");
            for (n, (_, bytes)) in batch.iter().enumerate() {
                if n > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(bytes);
            }
            body.extend_from_slice(b"]}");
            let request = self
                .http
                .client()
                .post(self.url.clone())
                .header(AUTHORIZATION, self.authorization.clone())
                .header(CONTENT_TYPE, "application/json")
                .body(body);
            if let Err(e) = self.http.send(request, patience).await {
                for (row, _) in batch {
                    if results[*row].is_ok() {
                        results[*row] = Err(e.clone());
                    }
                }
            }
        }
        results
    }
}

/// Splits events into batches of at most `MAX_BATCH_EVENTS` events and `MAX_BATCH_BYTES` bytes,
/// never between two events of one row (they come together): a row goes out whole or not at
/// all, so one batch acknowledged and the next never sent cannot leave it half told and taken
/// for never sent.
pub fn pack(events: &[(usize, Vec<u8>)]) -> Vec<&[(usize, Vec<u8>)]> {
    let mut batches = Vec::new();
    let (mut start, mut at, mut bytes) = (0, 0, BATCH_OVERHEAD);
    for row in events.chunk_by(|a, b| a.0 == b.0) {
        let row_bytes: usize = row.iter().map(|(_, e)| e.len() + 1).sum();
        let count = at - start;
        if count > 0 && (count + row.len() > MAX_BATCH_EVENTS || bytes + row_bytes > MAX_BATCH_BYTES) {
            batches.push(&events[start..at]);
            (start, bytes) = (at, BATCH_OVERHEAD);
        }
        bytes += row_bytes;
        at += row.len();
    }
    if start < events.len() {
        batches.push(&events[start..]);
    }
    batches
}

/// A deterministic id for one message of one change, well under Segment's 100 characters.
pub fn message_id(kind: &str, user_id: &str, v: &PendingValue) -> String {
    let mut h = Sha256::new();
    for part in [kind, v.key.as_str(), user_id, v.value.as_str(), v.changed_at.as_str()] {
        h.update(part.as_bytes());
        h.update([0u8]);
    }
    let digest = h.finalize();
    let hex: String = digest.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("as-{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_respects_event_and_byte_limits() {
        let small: Vec<(usize, Vec<u8>)> = (0..6000).map(|i| (i, vec![b'x'; 10])).collect();
        let sizes: Vec<usize> = pack(&small).iter().map(|b| b.len()).collect();
        assert_eq!(sizes, vec![2500, 2500, 1000]);

        let big: Vec<(usize, Vec<u8>)> = (0..40).map(|i| (i, vec![b'x'; 30_000])).collect();
        let batches = pack(&big);
        for b in &batches {
            let bytes: usize = BATCH_OVERHEAD + b.iter().map(|(_, e)| e.len() + 1).sum::<usize>();
            assert!(bytes <= MAX_BATCH_BYTES, "{bytes}");
        }
        assert_eq!(batches.iter().map(|b| b.len()).sum::<usize>(), 40);
        assert_eq!(batches[0].len(), 15);
    }

    #[test]
    fn packing_keeps_a_rows_events_in_one_batch() {
        // Row 0 has one event, every other row two: a cut at 2,500 events would split row 1250.
        let events: Vec<(usize, Vec<u8>)> = (0..3000usize).map(|i| (i.div_ceil(2), vec![b'x'; 10])).collect();
        let batches = pack(&events);
        assert_eq!(batches[0].len(), 2499);
        for pair in batches.windows(2) {
            assert_ne!(pair[0].last().unwrap().0, pair[1][0].0, "a row split between two batches");
        }
        assert_eq!(batches.iter().map(|b| b.len()).sum::<usize>(), 3000);
    }

    #[test]
    fn message_id_identifies_the_change() {
        let v = PendingValue {
            key: "k".into(),
            value: "true".into(),
            kind: Kind::Audience,
            changed_at: "2026-01-01T00:00:00.000Z".into(),
        };
        let id = message_id("identify", "u1", &v);
        assert!(id.len() < 100);
        assert_eq!(id, message_id("identify", "u1", &v));
        assert_ne!(id, message_id("track", "u1", &v));
        assert_ne!(id, message_id("identify", "u2", &v));
        let later = PendingValue { changed_at: "2026-01-02T00:00:00.000Z".into(), ..v.clone() };
        assert_ne!(id, message_id("identify", "u1", &later));
    }
}
