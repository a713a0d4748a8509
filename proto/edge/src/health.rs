//! Probes and discovery: whether the daemon is ready ([`Readiness`]), answered over gRPC as
//! `grpc.health.v1.Health` ([`HealthService`], for Kubernetes' `grpc` probes and
//! grpc_health_probe) and over HTTP as `/readyz` (`metrics_http`), plus server reflection
//! ([`reflection`], for grpcurl).
//!
//! One [`Readiness`] per process, flipped by the daemon where it learns the facts (the ingester:
//! its spool open and its rules started; the uploader: the ingester and the store answering) and
//! read by both probes, so they cannot disagree. Each condition is named by what a probe says
//! while it is unmet ("store unreachable"); the daemon is ready when every condition is met and
//! it is not shutting down. Shutting down is final.
//!
//! These services answer without the control-plane token ([`OPEN_SERVICES`]): probes carry no
//! token, readiness is one bit, and reflection serves the schema (the .proto files, public in the
//! repository), never data.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tonic_reflection::pb::{v1 as reflection_v1, v1alpha as reflection_v1alpha};

/// The full names of the services every daemon serves to anyone, token or not.
pub const OPEN_SERVICES: [&str; 3] = [
    tonic_health::pb::health_server::SERVICE_NAME,
    reflection_v1::server_reflection_server::SERVICE_NAME,
    reflection_v1alpha::server_reflection_server::SERVICE_NAME,
];

/// Whether a gRPC request path (`/package.Service/Method`) is a call to one of [`OPEN_SERVICES`].
pub fn is_open_path(path: &str) -> bool {
    path.strip_prefix('/')
        .and_then(|rest| rest.split_once('/'))
        .is_some_and(|(service, _method)| OPEN_SERVICES.contains(&service))
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct State {
    /// Each condition by what is said while it is unmet, in the order first named; `true`: met.
    conditions: Vec<(&'static str, bool)>,
    stopping: bool,
}

impl State {
    fn verdict(&self) -> Result<(), NotReady> {
        if self.stopping {
            return Err(NotReady(vec!["shutting down"]));
        }
        let unmet: Vec<&'static str> = self
            .conditions
            .iter()
            .filter(|(_, met)| !met)
            .map(|(name, _)| *name)
            .collect();
        if unmet.is_empty() {
            Ok(())
        } else {
            Err(NotReady(unmet))
        }
    }

    fn serving_status(&self) -> ServingStatus {
        match self.verdict() {
            Ok(()) => ServingStatus::Serving,
            Err(_) => ServingStatus::NotServing,
        }
    }
}

/// Why a daemon is not ready: what is unmet, e.g. `store unreachable, ingester unreachable`, or
/// `shutting down`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NotReady(Vec<&'static str>);

impl NotReady {
    pub fn reasons(&self) -> &[&'static str] {
        &self.0
    }
}

impl fmt::Display for NotReady {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join(", "))
    }
}

/// The process's readiness; clones share it.
#[derive(Debug, Clone)]
pub struct Readiness {
    state: watch::Sender<State>,
}

impl Readiness {
    /// Not ready until each of `conditions` is met ([`Readiness::set`]).
    pub fn new(conditions: &[&'static str]) -> Readiness {
        let state = State {
            conditions: conditions.iter().map(|&name| (name, false)).collect(),
            stopping: false,
        };
        Readiness {
            state: watch::Sender::new(state),
        }
    }

    /// Marks `condition` met or not; one not named before is added (met or not).
    pub fn set(&self, condition: &'static str, met: bool) {
        let mut change = None;
        self.state.send_if_modified(|state| {
            let before = state.verdict();
            match state
                .conditions
                .iter_mut()
                .find(|(name, _)| *name == condition)
            {
                Some((_, was)) if *was == met => return false,
                Some((_, was)) => *was = met,
                None => state.conditions.push((condition, met)),
            }
            let after = state.verdict();
            if before.is_ok() != after.is_ok() {
                change = Some(after);
            }
            true
        });
        match change {
            Some(Ok(())) => tracing::info!("ready"),
            Some(Err(not_ready)) => tracing::info!(reason = %not_ready, "not ready"),
            None => {}
        }
    }

    /// Shutting down: not ready from now on, whatever is set later. Health watches end after
    /// saying so, so that they do not hold up the gRPC server's graceful stop.
    pub fn stopping(&self) {
        self.state.send_if_modified(|state| {
            let changed = !state.stopping;
            state.stopping = true;
            changed
        });
    }

    /// `Ok` when ready, else what is not.
    pub fn check(&self) -> Result<(), NotReady> {
        self.state.borrow().verdict()
    }

    pub fn is_ready(&self) -> bool {
        self.check().is_ok()
    }
}

/// `grpc.health.v1.Health` over a [`Readiness`]: every name it knows (`""`, the whole server,
/// and the daemon's own services) is SERVING exactly when the daemon is ready. Any other name is
/// NOT_FOUND (Check) or SERVICE_UNKNOWN (Watch), as the health protocol says.
///
/// Not tonic-health's own `HealthReporter` service: its Watch streams never end, and an open
/// Watch would keep the server's graceful shutdown waiting forever. These end once the daemon
/// stops (after sending NOT_SERVING); the protocol has clients retry a Watch that ends.
#[derive(Debug, Clone)]
pub struct HealthService {
    readiness: Readiness,
    services: Arc<[String]>,
}

impl HealthService {
    pub fn new(readiness: Readiness, services: &[&str]) -> HealthService {
        HealthService {
            readiness,
            services: services.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn knows(&self, service: &str) -> bool {
        service.is_empty() || self.services.iter().any(|s| s == service)
    }
}

fn reply(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse {
        status: status as i32,
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<HealthCheckResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Health for HealthService {
    async fn check(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<HealthCheckResponse>, Status> {
        let service = &request.get_ref().service;
        if !self.knows(service) {
            return Err(Status::not_found(format!("unknown service {service:?}")));
        }
        Ok(Response::new(reply(
            self.readiness.state.borrow().serving_status(),
        )))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<HealthCheckRequest>,
    ) -> Result<Response<WatchStream>, Status> {
        let known = self.knows(&request.get_ref().service);
        let rx = self.readiness.state.subscribe();
        // (receiver, last status sent, whether the stream is done)
        let stream =
            futures::stream::unfold((rx, None, false), move |(mut rx, last, done)| async move {
                if done {
                    return None;
                }
                loop {
                    let (status, stopping) = {
                        let state = rx.borrow_and_update();
                        let status = if known {
                            state.serving_status()
                        } else {
                            ServingStatus::ServiceUnknown
                        };
                        (status, state.stopping)
                    };
                    if last != Some(status) {
                        return Some((Ok(reply(status)), (rx, Some(status), stopping)));
                    }
                    if stopping || rx.changed().await.is_err() {
                        return None;
                    }
                }
            });
        Ok(Response::new(Box::pin(stream)))
    }
}

/// The health service to add to a daemon's gRPC server; `services` are its own services' full
/// names (answered besides `""`).
pub fn health_server(readiness: Readiness, services: &[&str]) -> HealthServer<HealthService> {
    HealthServer::new(HealthService::new(readiness, services))
}

/// Server reflection, v1 and v1alpha (grpcurl asks v1 first, older tools v1alpha), advertising
/// the daemon's own `services` and [`OPEN_SERVICES`], and describing every message of
/// `proto::FILE_DESCRIPTOR_SET` and of the health and reflection protocols.
pub fn reflection(
    services: &[&str],
) -> Result<
    (
        reflection_v1::server_reflection_server::ServerReflectionServer<
            impl reflection_v1::server_reflection_server::ServerReflection,
        >,
        reflection_v1alpha::server_reflection_server::ServerReflectionServer<
            impl reflection_v1alpha::server_reflection_server::ServerReflection,
        >,
    ),
    tonic_reflection::server::Error,
> {
    let builder = || {
        let mut builder = tonic_reflection::server::Builder::configure()
            // Both versions' descriptors are registered below, whichever version answers.
            .include_reflection_service(false)
            .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(reflection_v1::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(reflection_v1alpha::FILE_DESCRIPTOR_SET);
        // Named, so that the ingester does not advertise the uploader's service (the shared
        // descriptor set holds both) nor the other way round.
        for name in services.iter().chain(OPEN_SERVICES.iter()) {
            builder = builder.with_service_name(*name);
        }
        builder
    };
    Ok((builder().build_v1()?, builder().build_v1alpha()?))
}

#[cfg(test)]
mod tests {
    use futures::StreamExt as _;

    use super::*;

    const SPOOL: &str = "spool not open";
    const RULES: &str = "rules not loaded";

    #[test]
    fn ready_only_when_every_condition_is_met_and_not_stopping() {
        let readiness = Readiness::new(&[SPOOL, RULES]);
        assert_eq!(readiness.check(), Err(NotReady(vec![SPOOL, RULES])));
        readiness.set(SPOOL, true);
        assert_eq!(
            readiness.check().map_err(|e| e.to_string()),
            Err(RULES.to_string())
        );
        readiness.set(RULES, true);
        assert!(readiness.is_ready());

        // A condition named later counts from then on; it can be lost and regained.
        let shared = readiness.clone();
        shared.set("store unreachable", false);
        assert_eq!(
            readiness.check().map_err(|e| e.to_string()),
            Err("store unreachable".to_string())
        );
        shared.set("store unreachable", true);
        shared.set("store unreachable", true);
        assert!(readiness.is_ready());

        // Stopping is final and says only that.
        readiness.stopping();
        readiness.set(SPOOL, true);
        assert_eq!(
            readiness
                .check()
                .map(|()| "ready")
                .map_err(|e| e.to_string()),
            Err("shutting down".to_string())
        );
        readiness.set(SPOOL, false);
        assert_eq!(
            readiness.check().map_err(|e| e.reasons().to_vec()),
            Err(vec!["shutting down"])
        );
    }

    #[test]
    fn open_paths_are_exactly_the_probe_and_discovery_services() {
        for open in [
            "/grpc.health.v1.Health/Check",
            "/grpc.health.v1.Health/Watch",
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ] {
            assert!(is_open_path(open), "{open}");
        }
        for closed in [
            "/tdmq_backup.v1.Ingester/Status",
            "/tdmq_backup.v1.Uploader/UploaderStatus",
            "/grpc.health.v1.Healthx/Check",
            "/grpc.health.v1/Health/Check",
            "grpc.health.v1.Health/Check",
            "/grpc.health.v1.Health",
            "/",
            "",
        ] {
            assert!(!is_open_path(closed), "{closed}");
        }
    }

    fn status_of(reply: &HealthCheckResponse) -> ServingStatus {
        ServingStatus::try_from(reply.status).unwrap_or(ServingStatus::Unknown)
    }

    #[tokio::test]
    async fn check_and_watch_follow_readiness_and_watch_ends_at_shutdown() -> Result<(), Status> {
        let readiness = Readiness::new(&[SPOOL]);
        let service = HealthService::new(readiness.clone(), &["tdmq_backup.v1.Ingester"]);
        let check = |name: &str| {
            let service = service.clone();
            let request = Request::new(HealthCheckRequest {
                service: name.to_string(),
            });
            async move { service.check(request).await.map(|r| status_of(r.get_ref())) }
        };
        assert_eq!(check("").await?, ServingStatus::NotServing);
        let err = check("tdmq_backup.v1.Uploader").await.expect_err("unknown");
        assert_eq!(err.code(), tonic::Code::NotFound);

        let mut watch = service
            .watch(Request::new(HealthCheckRequest {
                service: "tdmq_backup.v1.Ingester".into(),
            }))
            .await?
            .into_inner();
        let mut unknown = service
            .watch(Request::new(HealthCheckRequest {
                service: "nope".into(),
            }))
            .await?
            .into_inner();
        let next = |reply: Option<Result<HealthCheckResponse, Status>>| {
            reply.map(|r| r.map(|r| status_of(&r)))
        };
        assert_eq!(
            next(watch.next().await).transpose()?,
            Some(ServingStatus::NotServing)
        );
        assert_eq!(
            next(unknown.next().await).transpose()?,
            Some(ServingStatus::ServiceUnknown)
        );

        readiness.set(SPOOL, true);
        assert_eq!(check("").await?, ServingStatus::Serving);
        assert_eq!(
            check("tdmq_backup.v1.Ingester").await?,
            ServingStatus::Serving
        );
        assert_eq!(
            next(watch.next().await).transpose()?,
            Some(ServingStatus::Serving)
        );
        // A change that keeps the verdict sends nothing: the next message is the shutdown's.
        readiness.set("other", true);
        readiness.stopping();
        assert_eq!(
            next(watch.next().await).transpose()?,
            Some(ServingStatus::NotServing)
        );
        assert!(watch.next().await.is_none(), "the watch ends at shutdown");
        assert!(
            unknown.next().await.is_none(),
            "every watch ends at shutdown"
        );
        assert_eq!(check("").await?, ServingStatus::NotServing);
        Ok(())
    }

    #[test]
    fn reflection_builds_from_the_descriptor_sets() {
        assert!(reflection(&["tdmq_backup.v1.Ingester"]).is_ok());
    }
}
