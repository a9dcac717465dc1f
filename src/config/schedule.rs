//! Cron schedules: six fields with seconds first, in UTC, as tokio-cron-scheduler reads them.

use chrono::{DateTime, Utc};
use croner::Cron;
use croner::parser::{CronParser, Seconds};

/// The default schedule: every two hours, on the hour.
pub const DEFAULT_CRON: &str = "0 0 */2 * * *";

/// Parses a schedule the way the scheduler will, with an error an operator can act on.
pub fn parse(cron: &str) -> Result<Cron, String> {
    let fields = cron.split_whitespace().count();
    if fields == 5 {
        return Err(format!(
            "{cron:?} has 5 fields; audience-sync's cron has 6, starting with seconds (sec min hour day month weekday, UTC), e.g. \"0 {cron}\""
        ));
    }
    CronParser::builder()
        .seconds(Seconds::Required)
        .dom_and_dow(true)
        .build()
        .parse(cron)
        .map_err(|e| format!("{cron:?} is not a cron schedule (sec min hour day month weekday, UTC): {e}"))
}

/// The first time after `after` that `cron` fires.
pub fn next_after(cron: &str, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
    parse(cron).ok()?.find_next_occurrence(&after, false).ok()
}

/// The interval of a schedule around `at`: from the fire before it to the fire after.
pub fn interval_at(cron: &str, at: DateTime<Utc>) -> Option<chrono::Duration> {
    let parsed = parse(cron).ok()?;
    let next = parsed.find_next_occurrence(&at, false).ok()?;
    let previous = parsed.find_previous_occurrence(&at, true).ok()?;
    Some(next - previous)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_fields_are_refused_with_the_fix() {
        let e = parse("0 */2 * * *").unwrap_err();
        assert!(e.contains("has 5 fields") && e.contains("\"0 0 */2 * * *\""), "{e}");
        assert!(parse("nonsense cron x y z w").is_err());
        assert!(parse(DEFAULT_CRON).is_ok());
    }

    #[test]
    fn next_fire_and_interval() {
        let at = DateTime::parse_from_rfc3339("2026-11-30T03:15:00Z").unwrap().with_timezone(&Utc);
        let next = next_after(DEFAULT_CRON, at).unwrap();
        assert_eq!(next.to_rfc3339(), "2026-11-30T04:00:00+00:00");
        assert_eq!(interval_at(DEFAULT_CRON, at).unwrap(), chrono::Duration::hours(2));
        assert_eq!(interval_at("*/5 * * * * *", at).unwrap(), chrono::Duration::seconds(5));
    }
}
