//! Debug for the generated messages that carry a secret. prost derives `Debug` for every message
//! and would print `RuleSpec.token` (a Pulsar token) wherever a request is logged with `{:?}`;
//! build.rs turns that derive off for them (`skip_debug`) and they are written here instead.

use std::fmt;

use crate::v1::{RestoreTargetRequest, RuleSpec};

/// What a `{:?}` shows instead of a secret that is set.
const REDACTED: &str = "Some(***)";

impl fmt::Debug for RuleSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Destructured without `..`: a field added to the message fails to compile here until
        // someone decides whether it may be printed.
        let RuleSpec {
            name,
            service_url,
            topic,
            subscription,
            bucket,
            region,
            prefix,
            window,
            max_messages,
            max_bytes,
            start,
            cluster,
            role,
            token,
            endpoint,
            subscription_type,
            compression,
            compression_level,
            layout,
            format,
            fence,
        } = self;
        let token: &dyn fmt::Debug = match token {
            Some(_) => &format_args!("{REDACTED}"),
            None => &None::<()>,
        };
        f.debug_struct("RuleSpec")
            .field("name", name)
            .field("service_url", service_url)
            .field("topic", topic)
            .field("subscription", subscription)
            .field("bucket", bucket)
            .field("region", region)
            .field("prefix", prefix)
            .field("window", window)
            .field("max_messages", max_messages)
            .field("max_bytes", max_bytes)
            .field("start", start)
            .field("cluster", cluster)
            .field("role", role)
            .field("token", token)
            .field("endpoint", endpoint)
            .field("subscription_type", subscription_type)
            .field("compression", compression)
            .field("compression_level", compression_level)
            .field("layout", layout)
            .field("format", format)
            .field("fence", fence)
            .finish()
    }
}

impl fmt::Debug for RestoreTargetRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let RestoreTargetRequest {
            job,
            to_topic,
            service_url,
            token,
            dry_run,
        } = self;
        let token: &dyn fmt::Debug = if token.is_empty() {
            &None::<()>
        } else {
            &format_args!("{REDACTED}")
        };
        f.debug_struct("RestoreTargetRequest")
            .field("job", job)
            .field("to_topic", to_topic)
            .field("service_url", service_url)
            .field("token", token)
            .field("dry_run", dry_run)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use crate::v1::{CreateRuleRequest, EditRuleRequest, RuleSpec};

    const TOKEN: &str = "eyJhbGciOi.pulsar-role-token-never-printed";

    fn spec() -> RuleSpec {
        RuleSpec {
            name: "orders-bk".into(),
            topic: Some("persistent://public/default/orders".into()),
            token: Some(TOKEN.into()),
            ..RuleSpec::default()
        }
    }

    #[test]
    fn a_rule_spec_never_prints_its_token() {
        for text in [
            format!("{:?}", spec()),
            format!("{:#?}", spec()),
            format!("{:?}", CreateRuleRequest { spec: Some(spec()) }),
            format!(
                "{:?}",
                EditRuleRequest {
                    spec: Some(spec()),
                    unsubscribe: false
                }
            ),
        ] {
            assert!(!text.contains("pulsar-role-token"), "{text}");
            // Everything else is still there to debug with.
            assert!(
                text.contains("orders-bk") && text.contains("persistent://"),
                "{text}"
            );
            assert!(text.contains("token"), "says that there is a token: {text}");
        }
        let without = RuleSpec {
            token: None,
            ..spec()
        };
        assert!(format!("{without:?}").contains("token: None"));
    }

    #[test]
    fn a_restore_target_token_is_not_printed() {
        let req = crate::v1::RestoreTargetRequest {
            job: "j".into(),
            token: "tok-secret".into(),
            ..Default::default()
        };
        let shown = format!("{req:?}");
        assert!(
            !shown.contains("tok-secret") && shown.contains("***"),
            "{shown}"
        );
    }
}
