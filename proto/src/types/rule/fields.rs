//! Checks of a rule's single fields; each error names its field.

use super::*;

pub(super) fn validate_service_url(url: &str) -> Result<(), RuleError> {
    let rest = url
        .strip_prefix("pulsar://")
        .or_else(|| url.strip_prefix("pulsar+ssl://"))
        .ok_or_else(|| {
            invalid(
                "service_url",
                format!("service_url {url:?} must start with pulsar:// or pulsar+ssl://"),
            )
        })?;
    let host_port = rest.trim_end_matches('/');
    let valid = host_port.split(',').all(|hp| match hp.rsplit_once(':') {
        Some((host, port)) => !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0),
        None => false,
    });
    if !valid {
        return Err(invalid(
            "service_url",
            format!("service_url {url:?} must be pulsar://host:port or pulsar+ssl://host:port"),
        ));
    }
    Ok(())
}

/// A persistent topic whose parts can be path parts of an object key.
pub(super) fn validate_topic(input: &str) -> Result<TopicName, RuleError> {
    let topic = TopicName::parse(input).map_err(|m| invalid("topic", m))?;
    if !topic.persistent {
        // Without a cursor there is no redelivery and no acknowledgement to hold back: what the
        // ingester has not spooled when it stops is gone, which a backup must never allow.
        return Err(invalid(
            "topic",
            format!(
                "topic {input:?} is non-persistent: the broker keeps no messages for it, so a \
                 backup could neither resume nor prove it missed nothing; back up a \
                 persistent:// topic"
            ),
        ));
    }
    for (what, part) in [
        ("tenant", &topic.tenant),
        ("namespace", &topic.namespace),
        ("topic", &topic.topic),
    ] {
        if is_dot_part(part) {
            return Err(invalid(
                "topic",
                format!(
                    "topic {input:?} has the {what} {part:?}: \".\" and \"..\" cannot be path \
                     parts of the object keys"
                ),
            ));
        }
    }
    Ok(topic)
}

/// `.` and `..` mean "this" and "the parent" directory in a path: a key holding them names a
/// different file in a `file://` store, and S3 clients and consoles normalise them differently.
fn is_dot_part(part: &str) -> bool {
    part == "." || part == ".."
}

pub(super) fn validate_subscription(sub: &str) -> Result<(), RuleError> {
    let ok = sub.len() <= 255 && sub.chars().all(|c| c.is_ascii_graphic() && c != '/');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "subscription",
            format!(
                "subscription {sub:?} must be up to 255 printable characters without / or spaces"
            ),
        ))
    }
}

/// S3 bucket naming (COS's `name-appid` is a valid S3 name).
pub(super) fn validate_bucket(bucket: &str) -> Result<(), RuleError> {
    let len_ok = (3..=63).contains(&bucket.len());
    let chars_ok = bucket
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    let edges_ok = bucket.starts_with(|c: char| c.is_ascii_alphanumeric())
        && bucket.ends_with(|c: char| c.is_ascii_alphanumeric());
    if len_ok && chars_ok && edges_ok && !bucket.contains("..") {
        Ok(())
    } else {
        Err(invalid(
            "bucket",
            format!(
                "bucket {bucket:?} must be 3-63 characters of a-z 0-9 - . (COS: name-appid), \
                 starting and ending with a letter or digit"
            ),
        ))
    }
}

pub(super) fn validate_endpoint(endpoint: &str) -> Result<(), RuleError> {
    let ok = ["http://", "https://", "file://"].iter().any(|s| {
        endpoint
            .strip_prefix(s)
            .is_some_and(|rest| !rest.is_empty())
    });
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "endpoint",
            format!("endpoint {endpoint:?} must be an http://, https:// or file:// URL"),
        ))
    }
}

pub(super) fn validate_region(region: &str, endpoint: &str) -> Result<(), RuleError> {
    let chars_ok = region
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !chars_ok {
        return Err(invalid(
            "region",
            format!("region {region:?} may only hold a-z 0-9 -"),
        ));
    }
    if cos_endpoint(region).is_none() && endpoint.is_empty() {
        return Err(invalid(
            "region",
            format!(
                "region {region:?} is not a known COS region ({}); give --endpoint for any other",
                COS_REGIONS.join(" ")
            ),
        ));
    }
    Ok(())
}

pub(super) fn validate_prefix(prefix: &str) -> Result<(), RuleError> {
    if prefix.is_empty() {
        return Ok(());
    }
    if !prefix.ends_with('/') {
        return Err(invalid(
            "prefix",
            format!("prefix {prefix:?} must end with \"/\""),
        ));
    }
    if prefix.starts_with('/') || prefix.contains("//") || prefix.contains('\\') {
        return Err(invalid(
            "prefix",
            format!("prefix {prefix:?} must not start with \"/\" or hold empty path parts"),
        ));
    }
    if prefix.split('/').any(is_dot_part) {
        return Err(invalid(
            "prefix",
            format!("prefix {prefix:?} must not hold \".\" or \"..\" path parts"),
        ));
    }
    if prefix.len() > 512 || prefix.chars().any(char::is_control) {
        return Err(invalid(
            "prefix",
            format!("prefix {prefix:?} must be at most 512 printable characters"),
        ));
    }
    Ok(())
}

pub(super) fn validate_label(field: &'static str, value: &str) -> Result<(), RuleError> {
    if value.len() > 128 || value.chars().any(char::is_control) {
        return Err(invalid(
            field,
            format!("{field} must be at most 128 printable characters"),
        ));
    }
    Ok(())
}
