//! The control-plane token: one shared secret that every gRPC call to a daemon carries as
//! `authorization: Bearer <token>` (ctl → ingester, ctl → uploader, uploader → ingester).
//!
//! This is the wire half: both halves are tonic interceptors and pure — [`RequireToken`] on the
//! servers, [`SendToken`] on the uploader's client (ctl has its own) — plus the checks on
//! addresses and URLs. Reading a token file is a process edge (`edge::token_file`).
//! A refusal never echoes what was sent, and the comparison takes the same time whatever the
//! first wrong byte is, so the token cannot be guessed byte by byte.

use std::sync::Arc;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::{Request, Status};

use crate::types::Secret;

/// The only thing a refused caller learns.
pub const UNAUTHENTICATED: &str = "missing or wrong control-plane token";

/// `a == b` in time that depends only on the lengths, not on where the bytes differ.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    let n = a.len().max(b.len());
    for i in 0..n {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= x ^ y;
    }
    diff == 0
}

/// The token of an `authorization` header value `Bearer <token>` (scheme case-insensitive).
pub fn bearer_token(header: &[u8]) -> Option<&[u8]> {
    let scheme = header.get(..7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = header.get(7..)?.trim_ascii();
    (!token.is_empty()).then_some(token)
}

/// Why a token cannot be used. Says what is wrong, never what the token is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is empty")]
    Empty,
    #[error("the file holds more than one line; it must hold the token alone")]
    SeveralLines,
    #[error("the token holds characters not allowed in a header (use printable ASCII)")]
    NotHeaderSafe,
}

/// Checks a token read from a file (already trimmed by the caller or not): non-empty, printable
/// ASCII without spaces, so it fits an HTTP/2 header unchanged.
pub fn validate_token(token: &str) -> Result<(), TokenError> {
    if token.is_empty() {
        return Err(TokenError::Empty);
    }
    // Two tokens, or a token and a comment: said as such rather than as a bad character.
    if token.lines().nth(1).is_some() {
        return Err(TokenError::SeveralLines);
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(TokenError::NotHeaderSafe);
    }
    Ok(())
}

/// Whether `addr` can only be reached from this host (127.0.0.0/8, ::1, or ::ffff:127.x).
pub fn is_loopback(addr: std::net::SocketAddr) -> bool {
    addr.ip().to_canonical().is_loopback()
}

/// Guarantee 7: a control plane reachable beyond loopback needs a token, unless the config
/// says `allow_unauthenticated = true` (something else, e.g. a firewall, guards the port).
/// The error names the address and both keys that would let the daemon start.
pub fn check_listen_exposure(
    listen: std::net::SocketAddr,
    token_configured: bool,
    allow_unauthenticated: bool,
) -> Result<(), String> {
    if token_configured || allow_unauthenticated || is_loopback(listen) {
        return Ok(());
    }
    Err(format!(
        "listen {listen} is reachable beyond loopback but no auth_token_file is set, so anyone \
         who reaches the port could use the control plane; set auth_token_file (and give ctl \
         the same file with --token-file), listen on 127.0.0.1, or set \
         allow_unauthenticated = true if something else guards the port"
    ))
}

/// Whether a token sent to `url` would cross the network unencrypted: a plain `http://` URL whose
/// host is not loopback (`localhost`, 127.0.0.0/8, `[::1]`). Callers warn; they still send it,
/// as some deployments encrypt the network underneath (a VPN, a service mesh).
pub fn token_travels_in_clear(url: &str) -> bool {
    let url = url.trim();
    let Some(rest) = url
        .get(..7)
        .filter(|scheme| scheme.eq_ignore_ascii_case("http://"))
        .and_then(|_| url.get(7..))
    else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    let host = match host_port.strip_prefix('[') {
        Some(bracketed) => bracketed.split(']').next().unwrap_or_default(),
        None => host_port.split(':').next().unwrap_or_default(),
    };
    if host.eq_ignore_ascii_case("localhost") {
        return false;
    }
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => !ip.to_canonical().is_loopback(),
        Err(_) => true,
    }
}

/// Server side: refuses calls without the right `authorization` header. Without a token
/// configured every call passes (single-host setups on loopback).
#[derive(Clone, Default)]
pub struct RequireToken {
    expected: Option<Arc<Secret>>,
}

impl RequireToken {
    pub fn new(token: Option<Secret>) -> RequireToken {
        RequireToken {
            expected: token.map(Arc::new),
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.expected.is_some()
    }

    /// Whether a call with this `authorization` header value may proceed.
    pub fn allows(&self, header: Option<&[u8]>) -> bool {
        let Some(expected) = &self.expected else {
            return true;
        };
        let Some(sent) = header.and_then(bearer_token) else {
            return false;
        };
        constant_time_eq(sent, expected.expose().as_bytes())
    }
}

impl std::fmt::Debug for RequireToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RequireToken")
            .field("enabled", &self.is_enabled())
            .finish()
    }
}

impl Interceptor for RequireToken {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let header = request
            .metadata()
            .get("authorization")
            .map(MetadataValue::as_bytes);
        if self.allows(header) {
            Ok(request)
        } else {
            Err(Status::unauthenticated(UNAUTHENTICATED))
        }
    }
}

/// Client side: adds `authorization: Bearer <token>` to every call when a token is configured.
#[derive(Clone, Default)]
pub struct SendToken {
    header: Option<MetadataValue<Ascii>>,
}

impl SendToken {
    pub fn new(token: Option<&Secret>) -> Result<SendToken, TokenError> {
        let Some(token) = token else {
            return Ok(SendToken::default());
        };
        validate_token(token.expose())?;
        let mut header = format!("Bearer {}", token.expose())
            .parse::<MetadataValue<Ascii>>()
            .map_err(|_| TokenError::NotHeaderSafe)?;
        // Keeps it out of HPACK's dynamic table, as HTTP clients do for credentials.
        header.set_sensitive(true);
        Ok(SendToken {
            header: Some(header),
        })
    }
}

impl std::fmt::Debug for SendToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendToken")
            .field("enabled", &self.header.is_some())
            .finish()
    }
}

impl Interceptor for SendToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(header) = &self.header {
            request
                .metadata_mut()
                .insert("authorization", header.clone());
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"abcd", b"abc"));
        assert!(!constant_time_eq(b"", b"a"));
    }

    #[test]
    fn bearer_header_parsing() {
        assert_eq!(bearer_token(b"Bearer tok"), Some(&b"tok"[..]));
        assert_eq!(bearer_token(b"bearer  tok "), Some(&b"tok"[..]));
        assert_eq!(bearer_token(b"Basic dG9r"), None);
        assert_eq!(bearer_token(b"Bearer "), None);
        assert_eq!(bearer_token(b"tok"), None);
    }

    #[test]
    fn tokens_must_fit_a_header() {
        assert_eq!(validate_token(""), Err(TokenError::Empty));
        assert_eq!(validate_token("a b"), Err(TokenError::NotHeaderSafe));
        assert_eq!(validate_token("tök"), Err(TokenError::NotHeaderSafe));
        assert_eq!(validate_token("eyJ.abc-_=+/"), Ok(()));
    }

    #[test]
    fn a_control_plane_beyond_loopback_needs_a_token_or_an_opt_out() {
        let addr = |s: &str| s.parse::<std::net::SocketAddr>().expect("literal");
        for open in [
            "127.0.0.1:7601",
            "127.3.4.5:0",
            "[::1]:7601",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert!(
                check_listen_exposure(addr(open), false, false).is_ok(),
                "{open}"
            );
        }
        for exposed in ["0.0.0.0:7601", "10.0.0.21:7601", "[::]:7601", "[fe80::1]:1"] {
            let err = check_listen_exposure(addr(exposed), false, false).expect_err(exposed);
            assert!(
                err.contains("auth_token_file") && err.contains("allow_unauthenticated"),
                "{err}"
            );
            assert!(err.contains(exposed), "{err}");
            assert!(check_listen_exposure(addr(exposed), true, false).is_ok());
            assert!(check_listen_exposure(addr(exposed), false, true).is_ok());
        }
    }

    #[test]
    fn tokens_travel_in_clear_over_http_beyond_loopback_only() {
        for clear in [
            "http://10.0.0.21:7601",
            "http://ingester.internal:7601/",
            "HTTP://192.0.2.1",
            "http://[fe80::1]:7601",
            "http://user@10.0.0.1:1",
        ] {
            assert!(token_travels_in_clear(clear), "{clear}");
        }
        for safe in [
            "http://127.0.0.1:7601",
            "http://localhost:7601",
            "http://LOCALHOST",
            "http://[::1]:7601",
            "http://127.9.9.9",
            "https://10.0.0.21:7601",
            "https://ingester.internal",
        ] {
            assert!(!token_travels_in_clear(safe), "{safe}");
        }
    }

    fn call(server: &mut RequireToken, client: &mut SendToken) -> Result<(), Status> {
        let request = client.call(Request::new(()))?;
        server.call(request).map(|_| ())
    }

    #[test]
    fn server_refuses_missing_or_wrong_token_without_echoing_it() -> Result<(), TokenError> {
        let secret = Secret::new("s3cret-control-token");
        let mut server = RequireToken::new(Some(secret.clone()));
        assert!(call(&mut server, &mut SendToken::new(Some(&secret))?).is_ok());

        let err = call(&mut server, &mut SendToken::default()).expect_err("no token");
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        assert_eq!(err.message(), UNAUTHENTICATED);

        let wrong = Secret::new("s3cret-control-tokeX");
        let err = call(&mut server, &mut SendToken::new(Some(&wrong))?).expect_err("wrong");
        assert_eq!(err.code(), tonic::Code::Unauthenticated);
        assert!(!err.message().contains("tokeX"));
        assert!(!format!("{err:?}").contains("s3cret"));

        // No token configured: everything passes, with or without a header.
        let mut open = RequireToken::default();
        assert!(call(&mut open, &mut SendToken::default()).is_ok());
        assert!(call(&mut open, &mut SendToken::new(Some(&wrong))?).is_ok());
        assert!(!format!("{server:?}").contains("s3cret"));
        Ok(())
    }
}
