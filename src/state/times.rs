//! Times as the state's tables keep them where they are integers: milliseconds since 1970,
//! turned back into the RFC 3339 text the rest of the program and the operator's views use.

use chrono::{DateTime, SecondsFormat, Utc};

/// The milliseconds of an RFC 3339 time.
pub fn millis(time: &str) -> anyhow::Result<i64> {
    let parsed =
        DateTime::parse_from_rfc3339(time).map_err(|e| anyhow::anyhow!("bad time {time:?} in the state: {e}"))?;
    Ok(parsed.timestamp_millis())
}

/// A stored time as RFC 3339 text, as `crate::state::now` writes it.
pub fn time_text(millis: i64) -> String {
    DateTime::<Utc>::from_timestamp_millis(millis)
        .map_or_else(|| millis.to_string(), |t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
}

/// Converts stored times for the bulk reads, where consecutive rows nearly always share one:
/// the last conversion is kept.
#[derive(Default)]
pub struct Times {
    /// The last time read: its milliseconds, and its text.
    to_text: Option<(i64, String)>,
}

impl Times {
    /// `millis` as RFC 3339 text.
    pub fn text(&mut self, millis: i64) -> String {
        match &self.to_text {
            Some((m, text)) if *m == millis => text.clone(),
            _ => {
                let text = time_text(millis);
                self.to_text = Some((millis, text.clone()));
                text
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_to_the_millisecond() {
        let now = crate::state::now();
        assert_eq!(time_text(millis(&now).unwrap()), now);
        let mut times = Times::default();
        let stored = millis("2026-12-05T23:20:29.123Z").unwrap();
        assert_eq!(stored, 1_796_512_829_123);
        assert_eq!(times.text(stored), "2026-12-05T23:20:29.123Z");
        assert_eq!(times.text(stored + 1), "2026-12-05T23:20:29.124Z");
    }
}
