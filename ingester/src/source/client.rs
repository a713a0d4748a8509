//! The Pulsar client a rule's connections start from: its consumers and the short-lived one
//! that removes its subscription reach the broker the same way.

use proto::types::{Secret, SubscriptionKind};

use super::trust::PulsarTrust;
use pulsar::message::proto::command_subscribe::SubType;
use pulsar::{Authentication, ConnectionRetryOptions, Pulsar, TokioExecutor};

/// Connects to `service_url`, authenticating with `token` unless it is absent or empty (the
/// rule store keeps no empty token; an empty one is no credential to send). A `pulsar+ssl://`
/// broker's certificate must chain to a public root or to `trust`'s CA file.
pub async fn connect(
    service_url: String,
    token: Option<&Secret>,
    trust: &PulsarTrust,
    retry: ConnectionRetryOptions,
) -> Result<Pulsar<TokioExecutor>, pulsar::Error> {
    let mut builder =
        Pulsar::builder(service_url, TokioExecutor).with_connection_retry_options(retry);
    if let Some(pem) = trust.ca_pem() {
        builder = builder.with_certificate_chain(pem.to_vec());
    }
    if let Some(token) = token.filter(|t| !t.is_empty()) {
        builder = builder.with_auth(Authentication {
            name: "token".to_string(),
            data: token.expose().as_bytes().to_vec(),
        });
    }
    builder.build().await
}

/// Pulsar's subscription type for a rule's.
pub fn sub_type(kind: SubscriptionKind) -> SubType {
    match kind {
        SubscriptionKind::Failover => SubType::Failover,
        SubscriptionKind::Exclusive => SubType::Exclusive,
    }
}
