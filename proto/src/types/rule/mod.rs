//! Backup rules: what an operator writes ([`RuleSpecInput`]), validated into what the ingester
//! stores and runs ([`RuleConfig`]). Validation refuses the whole rule and names the field.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::object_key::TopicName;

mod fields;
mod output;
use fields::{
    validate_bucket, validate_endpoint, validate_label, validate_prefix, validate_region,
    validate_service_url, validate_subscription, validate_topic,
};
pub use output::{Compression, Format, KeyLayout, PARQUET_EXTENSION};

pub const DEFAULT_WINDOW: Duration = Duration::from_secs(300);
pub const DEFAULT_MAX_MESSAGES: u64 = 5000;
pub const DEFAULT_MAX_BYTES: u64 = 500_000_000;
pub const MAX_WINDOW: Duration = Duration::from_secs(24 * 3600);
pub const MAX_MAX_MESSAGES: u64 = 1_000_000;
pub const MAX_MAX_BYTES: u64 = 5_000_000_000;

/// The seed product's seven COS regions, known by name.
pub const COS_REGIONS: [&str; 7] = [
    "ap-guangzhou",
    "ap-shanghai",
    "ap-hongkong",
    "ap-beijing",
    "ap-chengdu",
    "ap-singapore",
    "na-siliconvalley",
];

/// `https://cos.<region>.myqcloud.com` for a known COS region.
pub fn cos_endpoint(region: &str) -> Option<String> {
    COS_REGIONS
        .contains(&region)
        .then(|| format!("https://cos.{region}.myqcloud.com"))
}

/// An invalid rule: which field, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RuleError {
    pub field: &'static str,
    pub message: String,
}

fn invalid(field: &'static str, message: String) -> RuleError {
    RuleError { field, message }
}

/// Failover: one active consumer, a standby takes over. Exclusive: a second ingester is refused.
/// Shared subscriptions are not offered: they break the per-partition order the spool relies on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SubscriptionKind {
    #[default]
    Failover,
    Exclusive,
}

impl SubscriptionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SubscriptionKind::Failover => "failover",
            SubscriptionKind::Exclusive => "exclusive",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase", tag = "kind", content = "at")]
pub enum StartPosition {
    #[default]
    Earliest,
    Latest,
    /// Seek by publish time, in milliseconds since the epoch.
    Timestamp(u64),
}

impl StartPosition {
    pub fn parse(input: &str) -> Result<StartPosition, String> {
        match input {
            "earliest" => Ok(StartPosition::Earliest),
            "latest" => Ok(StartPosition::Latest),
            other => DateTime::parse_from_rfc3339(other)
                .ok()
                .and_then(|t| u64::try_from(t.with_timezone(&Utc).timestamp_millis()).ok())
                .map(StartPosition::Timestamp)
                .ok_or_else(|| {
                    format!("start {other:?} must be earliest, latest or an RFC 3339 timestamp")
                }),
        }
    }

    pub fn display(&self) -> String {
        match self {
            StartPosition::Earliest => "earliest".into(),
            StartPosition::Latest => "latest".into(),
            StartPosition::Timestamp(ms) => super::time::rfc3339_from_millis(*ms),
        }
    }
}

/// A rule as written: every field optional so the same type serves create (defaults fill in),
/// edit (unset fields keep their value) and `--from-file RULE.toml`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSpecInput {
    pub name: Option<String>,
    pub service_url: Option<String>,
    pub topic: Option<String>,
    pub subscription: Option<String>,
    pub subscription_type: Option<String>,
    pub bucket: Option<String>,
    pub region: Option<String>,
    pub prefix: Option<String>,
    pub window: Option<String>,
    pub max_messages: Option<u64>,
    /// `500MB`, `64MiB` or a plain number of bytes.
    pub max_bytes: Option<String>,
    pub start: Option<String>,
    pub cluster: Option<String>,
    pub role: Option<String>,
    pub endpoint: Option<String>,
    pub compression: Option<String>,
    /// gzip 1..=9 (default 1), zstd 1..=19 (default 1); not with `none`.
    pub compression_level: Option<u32>,
    pub layout: Option<String>,
    /// `jsonl` (default) or `parquet`.
    pub format: Option<String>,
    /// Several ingesters share the subscription (default false).
    pub fence: Option<bool>,
}

/// A validated rule, as the ingester stores it. Holds no secret: the token is kept apart.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleConfig {
    pub name: String,
    pub service_url: String,
    pub topic: String,
    pub subscription: String,
    pub subscription_type: SubscriptionKind,
    pub bucket: String,
    pub region: String,
    pub prefix: String,
    pub window_secs: u64,
    pub max_messages: u64,
    pub max_bytes: u64,
    pub start: StartPosition,
    pub cluster: String,
    pub role: String,
    pub endpoint: String,
    pub compression: Compression,
    /// `None`: the compression's default level. Rules stored before levels existed have none.
    #[serde(default)]
    pub compression_level: Option<u32>,
    #[serde(default)]
    pub layout: KeyLayout,
    /// Rules stored before formats existed are JSON Lines.
    #[serde(default)]
    pub format: Format,
    /// Several ingesters share the subscription: a segment per partition, cut only where a Pulsar
    /// entry ends, under a key derived from its messages alone and stored by a conditional
    /// create, so whichever ingester stores a range first is the only one that does.
    #[serde(default)]
    pub fence: bool,
}

/// Every field of [`RuleSpecInput`] but `name`, once: `optional_spec_fields!(m, args)` expands to
/// `m!(args; service_url, …)`. [`crate::v1::RuleSpec`] carries them under the same names and
/// types (its `name` is always there, and its write-only `token` is not a rule field).
macro_rules! optional_spec_fields {
    ($m:ident, $($args:tt)*) => {
        $m!($($args)*;
            service_url,
            topic,
            subscription,
            subscription_type,
            bucket,
            region,
            prefix,
            window,
            max_messages,
            max_bytes,
            start,
            cluster,
            role,
            endpoint,
            compression,
            compression_level,
            layout,
            format,
            fence
        )
    };
}

impl From<&crate::v1::RuleSpec> for RuleSpecInput {
    fn from(spec: &crate::v1::RuleSpec) -> RuleSpecInput {
        macro_rules! copy {
            ($spec:ident; $($f:ident),*) => {
                RuleSpecInput {
                    name: Some($spec.name.clone()).filter(|n| !n.is_empty()),
                    $( $f: $spec.$f.clone(), )*
                }
            };
        }
        optional_spec_fields!(copy, spec)
    }
}

/// A stored rule as the spec that recreates it (`rule show -o toml`, `rule apply`): sizes in
/// bytes, the window as a duration, empty optional fields left out. The token is not part of it.
impl From<&crate::v1::Rule> for RuleSpecInput {
    fn from(rule: &crate::v1::Rule) -> RuleSpecInput {
        let text = |v: &str| Some(v.to_owned()).filter(|v| !v.is_empty());
        RuleSpecInput {
            name: text(&rule.name),
            service_url: text(&rule.service_url),
            topic: text(&rule.topic),
            subscription: text(&rule.subscription),
            subscription_type: text(&rule.subscription_type),
            bucket: text(&rule.bucket),
            region: text(&rule.region),
            // Empty is a value here: the bucket's root.
            prefix: Some(rule.prefix.clone()),
            window: Some(
                humantime::format_duration(std::time::Duration::from_secs(rule.window_secs))
                    .to_string()
                    .replace(' ', ""),
            ),
            max_messages: Some(rule.max_messages),
            max_bytes: Some(rule.max_bytes.to_string()),
            start: text(&rule.start),
            cluster: text(&rule.cluster),
            role: text(&rule.role),
            endpoint: text(&rule.endpoint),
            compression: text(&rule.compression),
            // 0: no level (`none`, or an ingester older than levels).
            compression_level: Some(rule.compression_level).filter(|&l| l != 0),
            layout: text(&rule.layout),
            format: text(&rule.format),
            fence: Some(rule.fence).filter(|&f| f),
        }
    }
}

impl RuleSpecInput {
    /// The required fields that are absent or blank, in the order the reference lists them.
    pub fn missing_required(&self) -> Vec<&'static str> {
        let blank = |v: &Option<String>| v.as_deref().map(str::trim).is_none_or(str::is_empty);
        [
            ("name", &self.name),
            ("service_url", &self.service_url),
            ("topic", &self.topic),
            ("subscription", &self.subscription),
            ("bucket", &self.bucket),
            ("region", &self.region),
        ]
        .into_iter()
        .filter(|(_, value)| blank(value))
        .map(|(field, _)| field)
        .collect()
    }

    /// The request form of these fields, with the Pulsar token (write-only) if one is given.
    pub fn into_spec(self, token: Option<String>) -> crate::v1::RuleSpec {
        macro_rules! copy {
            ($input:ident, $token:ident; $($f:ident),*) => {
                crate::v1::RuleSpec {
                    name: $input.name.unwrap_or_default(),
                    token: $token,
                    $( $f: $input.$f, )*
                }
            };
        }
        optional_spec_fields!(copy, self, token)
    }

    /// Fields set in `patch` replace ours. A new compression without a level drops our level:
    /// a level means something only for the compression it was given with. Likewise a new
    /// format without a compression drops ours, so it gets the format's own default.
    pub fn overlay(mut self, patch: RuleSpecInput) -> RuleSpecInput {
        if patch.format.is_some() && patch.format != self.format && patch.compression.is_none() {
            self.compression = None;
            self.compression_level = None;
        }
        if patch.compression.is_some()
            && patch.compression != self.compression
            && patch.compression_level.is_none()
        {
            self.compression_level = None;
        }
        macro_rules! take {
            ($patch:ident; $($f:ident),*) => { $( if $patch.$f.is_some() { self.$f = $patch.$f; } )* };
        }
        take!(patch; name);
        optional_spec_fields!(take, patch);
        self
    }

    /// Only the fields whose values differ from `base`'s (the name is kept): the edit that
    /// turns `base` into `self`.
    pub fn changes_from(&self, base: &RuleSpecInput) -> RuleSpecInput {
        let mut patch = RuleSpecInput {
            name: self.name.clone(),
            ..RuleSpecInput::default()
        };
        macro_rules! differing {
            ($base:ident; $($f:ident),*) => { $( if self.$f != $base.$f { patch.$f = self.$f.clone(); } )* };
        }
        optional_spec_fields!(differing, base);
        patch
    }

    /// The names of the fields whose values differ from `other`'s (for the rule's history).
    pub fn changed_fields(&self, other: &RuleSpecInput) -> Vec<&'static str> {
        let mut changed = Vec::new();
        macro_rules! compare {
            ($other:ident; $($f:ident),*) => { $( if self.$f != $other.$f { changed.push(stringify!($f)); } )* };
        }
        compare!(other; name);
        optional_spec_fields!(compare, other);
        changed
    }

    /// Validates every field. Missing required fields are listed all at once (the error's
    /// `field` is the first); otherwise the first invalid field is named.
    pub fn validate(&self) -> Result<RuleConfig, RuleError> {
        let missing = self.missing_required();
        if let Some(&first) = missing.first() {
            return Err(invalid(first, format!("{} required", list_of(&missing))));
        }
        let name = required("name", &self.name)?;
        validate_name(name)?;
        let service_url = required("service_url", &self.service_url)?;
        validate_service_url(service_url)?;
        let topic = validate_topic(required("topic", &self.topic)?)?;
        let subscription = required("subscription", &self.subscription)?;
        validate_subscription(subscription)?;
        let subscription_type = match self.subscription_type.as_deref() {
            None | Some("failover") => SubscriptionKind::Failover,
            Some("exclusive") => SubscriptionKind::Exclusive,
            Some(other) => {
                return Err(invalid(
                    "subscription_type",
                    format!("subscription_type {other:?} must be failover or exclusive"),
                ))
            }
        };
        let bucket = required("bucket", &self.bucket)?;
        validate_bucket(bucket)?;
        let endpoint = self.endpoint.clone().unwrap_or_default();
        if !endpoint.is_empty() {
            validate_endpoint(&endpoint)?;
        }
        let region = required("region", &self.region)?;
        validate_region(region, &endpoint)?;
        let prefix = self.prefix.clone().unwrap_or_default();
        validate_prefix(&prefix)?;
        let window = match &self.window {
            None => DEFAULT_WINDOW,
            Some(text) => parse_window(text)?,
        };
        let max_messages = self.max_messages.unwrap_or(DEFAULT_MAX_MESSAGES);
        if max_messages == 0 || max_messages > MAX_MAX_MESSAGES {
            return Err(invalid(
                "max_messages",
                format!("max_messages {max_messages} must be between 1 and {MAX_MAX_MESSAGES}"),
            ));
        }
        let max_bytes = match &self.max_bytes {
            None => DEFAULT_MAX_BYTES,
            Some(text) => parse_size(text).map_err(|m| invalid("max_bytes", m))?,
        };
        if max_bytes == 0 || max_bytes > MAX_MAX_BYTES {
            return Err(invalid(
                "max_bytes",
                format!("max_bytes {max_bytes} must be between 1 B and 5 GB"),
            ));
        }
        let start = match &self.start {
            None => StartPosition::Earliest,
            Some(text) => StartPosition::parse(text).map_err(|m| invalid("start", m))?,
        };
        let format = match self.format.as_deref() {
            None => Format::Jsonl,
            Some(text) => Format::parse(text).ok_or_else(|| {
                invalid(
                    "format",
                    format!("format {text:?} must be jsonl or parquet"),
                )
            })?,
        };
        let compression = match self.compression.as_deref() {
            None => format.default_compression(),
            Some(text) => Compression::parse(text).ok_or_else(|| {
                invalid(
                    "compression",
                    format!("compression {text:?} must be gzip, zstd or none"),
                )
            })?,
        };
        let compression_level = self.compression_level;
        if let Some(level) = compression_level {
            match compression.level_range() {
                None => {
                    return Err(invalid(
                        "compression_level",
                        format!(
                            "compression_level {level} is given but compression is {}: only \
                             gzip and zstd have levels",
                            compression.as_str()
                        ),
                    ))
                }
                Some(range) if !range.contains(&level) => {
                    return Err(invalid(
                        "compression_level",
                        format!(
                            "compression_level {level} must be between {} and {} for {}",
                            range.start(),
                            range.end(),
                            compression.as_str()
                        ),
                    ))
                }
                Some(_) => {}
            }
        }
        // The default level is kept as "no level": the stored rule then says the same whether
        // the level was written out or not (`rule show -o toml` round-trips).
        let compression_level = compression_level.filter(|&l| l != compression.default_level());
        let layout = match self.layout.as_deref() {
            None => KeyLayout::Plain,
            Some(text) => KeyLayout::parse(text).ok_or_else(|| {
                invalid("layout", format!("layout {text:?} must be plain or hive"))
            })?,
        };
        let cluster = self.cluster.clone().unwrap_or_default();
        validate_label("cluster", &cluster)?;
        let role = self.role.clone().unwrap_or_default();
        validate_label("role", &role)?;
        Ok(RuleConfig {
            name: name.to_string(),
            service_url: service_url.to_string(),
            topic: topic.full_name(),
            subscription: subscription.to_string(),
            subscription_type,
            bucket: bucket.to_string(),
            region: region.to_string(),
            prefix,
            window_secs: window.as_secs(),
            max_messages,
            max_bytes,
            start,
            cluster,
            role,
            endpoint,
            compression,
            compression_level,
            layout,
            format,
            fence: self.fence.unwrap_or(false),
        })
    }
}

/// What the ingester keeps about a rule besides its fields, as [`crate::v1::Rule`] shows it.
#[derive(Debug, Clone, Copy, Default)]
pub struct RuleState {
    pub has_token: bool,
    pub paused: bool,
    pub created_at_ms: u64,
    pub updated_at_ms: u64,
}

impl RuleConfig {
    /// The rule as the API returns it (`GetRule`, `ListRules`, ctl's `rule show`).
    pub fn to_rule(&self, state: RuleState) -> crate::v1::Rule {
        use super::time::rfc3339_from_millis;
        crate::v1::Rule {
            name: self.name.clone(),
            service_url: self.service_url.clone(),
            topic: self.topic.clone(),
            subscription: self.subscription.clone(),
            bucket: self.bucket.clone(),
            region: self.region.clone(),
            prefix: self.prefix.clone(),
            window_secs: self.window_secs,
            max_messages: self.max_messages,
            max_bytes: self.max_bytes,
            start: self.start.display(),
            cluster: self.cluster.clone(),
            role: self.role.clone(),
            has_token: state.has_token,
            endpoint: self.endpoint.clone(),
            subscription_type: self.subscription_type.as_str().to_string(),
            compression: self.compression.as_str().to_string(),
            compression_level: self.level(),
            layout: self.layout.as_str().to_string(),
            format: self.format.as_str().to_string(),
            fence: self.fence,
            paused: state.paused,
            created_at: rfc3339_from_millis(state.created_at_ms),
            updated_at: rfc3339_from_millis(state.updated_at_ms),
        }
    }

    pub fn to_input(&self) -> RuleSpecInput {
        RuleSpecInput {
            name: Some(self.name.clone()),
            service_url: Some(self.service_url.clone()),
            topic: Some(self.topic.clone()),
            subscription: Some(self.subscription.clone()),
            subscription_type: Some(self.subscription_type.as_str().into()),
            bucket: Some(self.bucket.clone()),
            region: Some(self.region.clone()),
            prefix: Some(self.prefix.clone()),
            window: Some(format!("{}s", self.window_secs)),
            max_messages: Some(self.max_messages),
            max_bytes: Some(self.max_bytes.to_string()),
            start: Some(self.start.display()),
            cluster: Some(self.cluster.clone()),
            role: Some(self.role.clone()),
            endpoint: Some(self.endpoint.clone()),
            compression: Some(self.compression.as_str().into()),
            compression_level: self.compression_level,
            layout: Some(self.layout.as_str().into()),
            format: Some(self.format.as_str().into()),
            fence: Some(self.fence),
        }
    }

    /// The level the rule's objects are compressed at (0 for `none`).
    pub fn level(&self) -> u32 {
        self.compression_level
            .unwrap_or_else(|| self.compression.default_level())
    }

    /// Whether both rules read one subscription: the same subscription name on the same topic
    /// (names are full after validation) of the same cluster. Two such rules split the messages
    /// between them, so only one may exist.
    pub fn reads_subscription_of(&self, other: &RuleConfig) -> bool {
        self.subscription == other.subscription
            && self.topic == other.topic
            && same_service_url(&self.service_url, &other.service_url)
    }

    /// Refuses `self` when one of `others` (not itself, by name) reads the same subscription.
    pub fn check_no_shared_subscription<'a>(
        &self,
        others: impl IntoIterator<Item = &'a RuleConfig>,
    ) -> Result<(), RuleError> {
        let Some(other) = others
            .into_iter()
            .find(|o| o.name != self.name && o.reads_subscription_of(self))
        else {
            return Ok(());
        };
        Err(invalid(
            "subscription",
            format!(
                "subscription {:?} on {} at {} is read by rule {:?} already: two rules on one subscription split its messages between them; give this rule its own --subscription",
                self.subscription, self.topic, self.service_url, other.name
            ),
        ))
    }

    pub fn topic_name(&self) -> TopicName {
        // Stored rules were validated, so the name parses; fall back to a literal split otherwise.
        TopicName::parse(&self.topic).unwrap_or_else(|_| TopicName {
            persistent: true,
            tenant: "public".into(),
            namespace: "default".into(),
            topic: self.topic.clone(),
        })
    }
}

/// Service URLs written differently for the same cluster: scheme and host are not case
/// sensitive, a trailing `/` means nothing.
fn same_service_url(a: &str, b: &str) -> bool {
    a.trim_end_matches('/')
        .eq_ignore_ascii_case(b.trim_end_matches('/'))
}

/// `a is`, `a and b are`, `a, b and c are`.
fn list_of(fields: &[&str]) -> String {
    match fields {
        [] => String::new(),
        [one] => format!("{one} is"),
        [init @ .., last] => format!("{} and {last} are", init.join(", ")),
    }
}

fn required<'a>(field: &'static str, value: &'a Option<String>) -> Result<&'a str, RuleError> {
    match value.as_deref().map(str::trim) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(invalid(field, format!("{field} is required"))),
    }
}

pub fn validate_name(name: &str) -> Result<(), RuleError> {
    let len_ok = (2..=60).contains(&name.len());
    let chars_ok = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-');
    let starts_ok = name.chars().next().is_some_and(|c| c.is_ascii_lowercase());
    if len_ok && chars_ok && starts_ok {
        Ok(())
    } else {
        Err(invalid(
            "name",
            format!("name {name:?} must be 2-60 characters of a-z 0-9 _ - starting with a letter"),
        ))
    }
}

/// `1s` ..= `24h`, humantime syntax.
pub fn parse_window(text: &str) -> Result<Duration, RuleError> {
    let window = humantime::parse_duration(text.trim()).map_err(|e| {
        invalid(
            "window",
            format!("window {text:?} is not a duration like 5m or 30s: {e}"),
        )
    })?;
    if window < Duration::from_secs(1) || window > MAX_WINDOW || window.subsec_nanos() != 0 {
        return Err(invalid(
            "window",
            format!("window {text:?} must be whole seconds between 1s and 24h"),
        ));
    }
    Ok(window)
}

/// Sizes: `KB MB GB` are powers of 1000, `KiB MiB GiB` powers of 1024, a bare number is bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        other => {
            return Err(format!(
                "size {text:?} has unknown unit {other:?} (use B, KB, MB, GB, KiB, MiB or GiB)"
            ))
        }
    };
    let value: f64 = number
        .parse()
        .map_err(|_| format!("size {text:?} is not a number followed by a unit, like 500MB"))?;
    let bytes = value * factor as f64;
    if !(bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64) || bytes.fract() != 0.0 {
        return Err(format!("size {text:?} is not a whole number of bytes"));
    }
    Ok(bytes as u64)
}

mod console;

#[cfg(test)]
mod tests;
