//! Time formats shared by records, keys and replies: RFC 3339 UTC with milliseconds.

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};

/// `2026-11-24T02:44:19.913Z`
pub fn rfc3339_ms(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Milliseconds since the Unix epoch → RFC 3339 UTC with milliseconds.
pub fn rfc3339_from_millis(ms: u64) -> String {
    match Utc
        .timestamp_millis_opt(i64::try_from(ms).unwrap_or(i64::MAX))
        .single()
    {
        Some(t) => rfc3339_ms(t),
        None => rfc3339_ms(DateTime::<Utc>::MAX_UTC),
    }
}

pub fn now_millis() -> u64 {
    u64::try_from(Utc::now().timestamp_millis()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_millis_and_z() {
        assert_eq!(
            rfc3339_from_millis(1_795_488_259_913),
            "2026-11-24T02:44:19.913Z"
        );
        assert_eq!(rfc3339_from_millis(0), "1970-01-01T00:00:00.000Z");
    }
}
