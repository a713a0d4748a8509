//! Two control-plane tokens: `auth_token_file` for operators (rules, status, logs) and, when
//! `uploader_token_file` is set, a separate one for the uploader's segment hand-off (ListSealed,
//! ReadSegment, CommitSegment, ReportUploadFailure). A commit acknowledges messages on Pulsar,
//! so with two tokens an operator's token cannot commit and the uploader's cannot touch rules.
//!
//! The probe and discovery services (`grpc.health.v1.Health`, server reflection:
//! [`edge::health::OPEN_SERVICES`]) need no token: Kubernetes' probes and grpc_health_probe
//! carry none, and they tell only whether the ingester is ready and what the schema is.
//!
//! A tower layer rather than a tonic interceptor: interceptors do not see which method is
//! called. The check itself is [`RequireToken`] (constant time, never echoes the token).

use std::task::{Context, Poll};

use futures::future::{Either, Ready};
use proto::auth::{RequireToken, UNAUTHENTICATED};
use tonic::body::Body;

/// The methods only the uploader calls (the segment hand-off, and a restore job's messages and
/// the end of its target: the uploader owns the job, so it drops the target when the job is done
/// or cancelled).
const SEGMENT_METHODS: [&str; 6] = [
    "/tdmq_backup.v1.Ingester/ListSealed",
    "/tdmq_backup.v1.Ingester/ReadSegment",
    "/tdmq_backup.v1.Ingester/CommitSegment",
    "/tdmq_backup.v1.Ingester/ReportUploadFailure",
    "/tdmq_backup.v1.Ingester/RestoreProduce",
    "/tdmq_backup.v1.Ingester/DropRestoreTarget",
];

/// Which token a call to `path` needs.
#[derive(Clone, Debug)]
pub struct TokenScopes {
    operator: RequireToken,
    /// `None`: one token for everything (the operator's).
    uploader: Option<RequireToken>,
}

impl TokenScopes {
    pub fn new(operator: RequireToken, uploader: Option<RequireToken>) -> TokenScopes {
        TokenScopes { operator, uploader }
    }

    /// Whether any token is required.
    pub fn is_enabled(&self) -> bool {
        self.operator.is_enabled()
    }

    pub fn is_split(&self) -> bool {
        self.uploader.is_some()
    }

    /// Whether a call to `path` with this `authorization` header value may proceed.
    pub fn allows(&self, path: &str, header: Option<&[u8]>) -> bool {
        if edge::health::is_open_path(path) {
            return true;
        }
        match &self.uploader {
            Some(uploader) if SEGMENT_METHODS.contains(&path) => uploader.allows(header),
            _ => self.operator.allows(header),
        }
    }
}

impl<S> tower::Layer<S> for TokenScopes {
    type Service = ScopedAuth<S>;

    fn layer(&self, inner: S) -> ScopedAuth<S> {
        ScopedAuth {
            inner,
            scopes: self.clone(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ScopedAuth<S> {
    inner: S,
    scopes: TokenScopes,
}

impl<S, B> tower::Service<http::Request<B>> for ScopedAuth<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<Body>>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = Either<Ready<Result<http::Response<Body>, S::Error>>, S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let header = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .map(http::HeaderValue::as_bytes);
        if self.scopes.allows(request.uri().path(), header) {
            Either::Right(self.inner.call(request))
        } else {
            let refusal = tonic::Status::unauthenticated(UNAUTHENTICATED).into_http();
            Either::Left(futures::future::ready(Ok(refusal)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proto::types::Secret;

    #[test]
    fn segment_methods_take_only_the_uploader_token_and_the_rest_only_the_operators() {
        let scopes = TokenScopes::new(
            RequireToken::new(Some(Secret::new("op"))),
            Some(RequireToken::new(Some(Secret::new("up")))),
        );
        let (op, up) = (Some(&b"Bearer op"[..]), Some(&b"Bearer up"[..]));
        for method in SEGMENT_METHODS {
            assert!(scopes.allows(method, up), "{method}");
            assert!(!scopes.allows(method, op), "{method}");
            assert!(!scopes.allows(method, None), "{method}");
        }
        for method in [
            "/tdmq_backup.v1.Ingester/CreateRule",
            "/tdmq_backup.v1.Ingester/DeleteRule",
            "/tdmq_backup.v1.Ingester/Status",
            "/tdmq_backup.v1.Ingester/Unknown",
        ] {
            assert!(scopes.allows(method, op), "{method}");
            assert!(!scopes.allows(method, up), "{method}");
        }
        // One token: it opens everything, as before.
        let single = TokenScopes::new(RequireToken::new(Some(Secret::new("op"))), None);
        assert!(single.allows(SEGMENT_METHODS[2], op));
        assert!(single.allows("/tdmq_backup.v1.Ingester/CreateRule", op));
        // Probes and reflection with any token or none; nothing else without one.
        for scopes in [&scopes, &single] {
            for method in [
                "/grpc.health.v1.Health/Check",
                "/grpc.health.v1.Health/Watch",
                "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
            ] {
                assert!(scopes.allows(method, None), "{method}");
                assert!(scopes.allows(method, Some(b"Bearer wrong")), "{method}");
            }
            assert!(!scopes.allows("/tdmq_backup.v1.Ingester/Status", None));
            assert!(!scopes.allows("/grpc.health.v1.HealthX/Check", None));
        }
        assert!(!format!("{scopes:?}").contains("op\""));
    }
}
