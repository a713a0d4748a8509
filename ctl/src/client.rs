//! Connecting to the daemons, the control-plane token, and turning gRPC failures into the
//! one-line errors the contract asks for (naming the daemon and its URL when it can't be reached).

use std::error::Error as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{anyhow, bail};
use proto::{IngesterClient, UploaderClient};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Request, Status};

use crate::exit::{self, Exit};

/// Long enough for a loaded host, short enough that `status` doesn't hang on a dead uploader.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub type Ingester = IngesterClient<InterceptedService<Channel, Auth>>;
pub type Uploader = UploaderClient<InterceptedService<Channel, Auth>>;

/// Which daemon a call went to, so errors can name it.
#[derive(Debug, Clone)]
pub struct Daemon {
    pub name: &'static str,
    pub url: String,
}

impl Daemon {
    pub fn ingester(url: &str) -> Daemon {
        Daemon {
            name: "ingester",
            url: normalize_url(url),
        }
    }

    pub fn uploader(url: &str) -> Daemon {
        Daemon {
            name: "uploader",
            url: normalize_url(url),
        }
    }

    /// A failed call, as one line.
    pub fn call_error(&self, status: Status) -> anyhow::Error {
        let message = one_line(status.message());
        // The connection broke under the call (e.g. a plain-HTTP/2 call to a TLS server, whose
        // handshake only happens on the first request): say which daemon and why.
        if let Some(source) = status.source() {
            let transport = source.downcast_ref::<tonic::transport::Error>();
            if transport.is_some() || message == "transport error" {
                let why = transport.map_or_else(|| chain(source), reason);
                let https = self.url.starts_with("https://");
                return exit::error(
                    Exit::Unreachable,
                    format!(
                        "cannot reach the {} at {}: {why}{}",
                        self.name,
                        self.url,
                        tls_hint(https, &Tls::default(), &why)
                    ),
                );
            }
        }
        let text = match status.code() {
            Code::Unavailable => format!(
                "cannot reach the {} at {}: {}",
                self.name,
                self.url,
                if message.is_empty() {
                    "unavailable"
                } else {
                    &message
                }
            ),
            Code::Unauthenticated => format!(
                "the {} refused the call: unauthenticated (check --auth-token-file)",
                self.name
            ),
            Code::PermissionDenied => format!(
                "the {} refused the call: permission denied (check --auth-token-file)",
                self.name
            ),
            Code::DeadlineExceeded => format!(
                "the {} at {} did not answer in time{}",
                self.name,
                self.url,
                detail(&message)
            ),
            Code::Unimplemented => format!(
                "the {} at {} does not support this call (is it the right daemon and version?){}",
                self.name,
                self.url,
                detail(&message)
            ),
            // InvalidArgument, NotFound, AlreadyExists, FailedPrecondition and the rest: the
            // daemon's message already names the field or the rule.
            _ if !message.is_empty() => message,
            code => format!("the {} failed the call: {code}", self.name),
        };
        exit::error(exit::of_code(status.code()), text)
    }
}

/// `: message`, or nothing for an empty one (no sentence ending in a colon).
fn detail(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

/// `127.0.0.1:7601` is what people type; tonic needs a scheme.
fn normalize_url(url: &str) -> String {
    let url = url.trim();
    if url.contains("://") {
        url.trim_end_matches('/').to_string()
    } else {
        format!("http://{}", url.trim_end_matches('/'))
    }
}

/// Adds the control-plane token to every call. Holds the header value, never prints it.
#[derive(Clone, Default)]
pub struct Auth {
    header: Option<MetadataValue<Ascii>>,
}

impl Auth {
    /// Reads the `--token-file` (trimmed). Errors name the flag and path, never the content.
    pub fn from_token_file(path: Option<&Path>) -> anyhow::Result<Auth> {
        let Some(path) = path else {
            return Ok(Auth::default());
        };
        let token = read_token_file("--auth-token-file", path)?;
        // Parse errors of MetadataValue don't echo the value, but say why ourselves anyway.
        let header = format!("Bearer {token}")
            .parse::<MetadataValue<Ascii>>()
            .map_err(|_| {
                anyhow!(
                    "--auth-token-file {}: the token holds characters not allowed in a header",
                    path.display()
                )
            })?;
        Ok(Auth {
            header: Some(header),
        })
    }
}

impl Auth {
    /// Whether calls carry a control-plane token.
    pub fn is_set(&self) -> bool {
        self.header.is_some()
    }
}

/// A token that would cross the network unencrypted is still sent (the network underneath may
/// be encrypted), but the operator is told, on stderr so `--output json` stays one document.
pub fn warn_if_in_clear(what: &str, daemon: &Daemon) {
    if proto::auth::token_travels_in_clear(&daemon.url) {
        eprintln!(
            "warning: {what} goes to the {} at {} unencrypted (plain http:// beyond loopback); \
             serve TLS there and use an https:// URL",
            daemon.name, daemon.url
        );
    }
}

impl Interceptor for Auth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(header) = &self.header {
            request
                .metadata_mut()
                .insert("authorization", header.clone());
        }
        Ok(request)
    }
}

/// A token file's content, trimmed. `what` names where the path came from (a flag or a key).
pub fn read_token_file(what: &str, path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| anyhow!("cannot read {what} {}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        bail!("{what} {} is empty", path.display());
    }
    // A second line is a mistake (two tokens, a comment): sending both would never match.
    if token.lines().count() > 1 {
        bail!(
            "{what} {} holds more than one line; a token file holds the token alone",
            path.display()
        );
    }
    Ok(token.to_string())
}

/// `--ca-file` / `--tls-domain`: used for the daemons given as https:// URLs.
#[derive(Debug, Clone, Default)]
pub struct Tls {
    pub ca_file: Option<PathBuf>,
    pub domain: Option<String>,
}

async fn channel(daemon: &Daemon, tls: &Tls, timeout: Duration) -> anyhow::Result<Channel> {
    // Said before any connection: `foo://host` would otherwise fail as a DNS error.
    let scheme = daemon.url.split("://").next().unwrap_or_default();
    if scheme != "http" && scheme != "https" {
        bail!(
            "--{} {:?}: unsupported scheme {scheme}://; use http:// or https://",
            daemon.name,
            daemon.url
        );
    }
    let mut endpoint = Endpoint::from_shared(daemon.url.clone())
        .map_err(|e| anyhow!("--{} {:?} is not a valid URL: {e}", daemon.name, daemon.url))?
        .connect_timeout(CONNECT_TIMEOUT.min(timeout))
        .timeout(timeout);
    let https = daemon.url.starts_with("https://");
    if https {
        let config = edge::tls::client_config(
            tls.ca_file.as_deref().map(|p| ("--ca-file", p)),
            tls.domain.as_deref(),
        )
        .map_err(|m| {
            if tls.ca_file.is_some() {
                anyhow!("{m}")
            } else {
                anyhow!(
                    "cannot verify the {} at {}: {m} (pass --ca-file)",
                    daemon.name,
                    daemon.url
                )
            }
        })?;
        endpoint = endpoint.tls_config(config).map_err(|e| {
            anyhow!(
                "TLS for the {} at {}: {}",
                daemon.name,
                daemon.url,
                reason(&e)
            )
        })?;
    }
    // Connect eagerly so "cannot reach" is reported once, with the daemon's name and URL,
    // instead of surfacing as an anonymous status on the first call.
    endpoint.connect().await.map_err(|e| {
        let why = reason(&e);
        exit::error(
            Exit::Unreachable,
            format!(
                "cannot reach the {} at {}: {why}{}",
                daemon.name,
                daemon.url,
                tls_hint(https, tls, &why)
            ),
        )
    })
}

/// What to try when the connection failed the way a scheme or certificate mismatch does.
fn tls_hint(https: bool, tls: &Tls, why: &str) -> &'static str {
    let why = why.to_ascii_lowercase();
    if !https && looks_like_tls_server(&why) {
        " (does it serve TLS? then use an https:// URL, with --ca-file)"
    } else if https && why.contains("certificate") && tls.ca_file.is_none() {
        " (pass the issuing CA with --ca-file)"
    } else if https && why.contains("certificate") {
        " (check --ca-file and --tls-domain)"
    } else if https && (why.contains("invalid content type") || why.contains("corrupt message")) {
        " (does it serve plain HTTP? then use an http:// URL)"
    } else {
        ""
    }
}

/// A plain-HTTP/2 client talking to a TLS server reads the server's TLS alert as a bogus frame
/// or sees the connection closed mid-handshake.
fn looks_like_tls_server(why: &str) -> bool {
    [
        "frame with invalid size",
        "frame_size_error",
        "connection reset",
        "connection closed",
        "broken pipe",
        "protocol error",
        "unexpected eof",
        "early eof",
    ]
    .iter()
    .any(|s| why.contains(s))
}

pub async fn ingester(
    daemon: &Daemon,
    tls: &Tls,
    auth: Auth,
    timeout: Duration,
) -> anyhow::Result<Ingester> {
    if auth.is_set() {
        warn_if_in_clear("the control-plane token", daemon);
    }
    let channel = channel(daemon, tls, timeout).await?;
    Ok(IngesterClient::with_interceptor(channel, auth))
}

pub async fn uploader(
    daemon: &Daemon,
    tls: &Tls,
    auth: Auth,
    timeout: Duration,
) -> anyhow::Result<Uploader> {
    if auth.is_set() {
        warn_if_in_clear("the control-plane token", daemon);
    }
    let channel = channel(daemon, tls, timeout).await?;
    Ok(UploaderClient::with_interceptor(channel, auth))
}

/// A transport error's useful part: tonic's top level only says "transport error", the cause
/// (connection refused, timed out, dns) is further down the source chain.
fn reason(error: &tonic::transport::Error) -> String {
    match error.source() {
        Some(source) => chain(source),
        None => one_line(&error.to_string()),
    }
}

/// An error and its sources, each layer's new information once, joined with ": ".
fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next: Option<&dyn std::error::Error> = Some(error);
    while let Some(e) = next {
        let text = one_line(&e.to_string());
        // Layers often repeat their cause in their own message; keep only new information.
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text) || text.contains(p)) {
            parts.push(text);
        } else if let Some(last) = parts.last_mut() {
            if text.contains(last.as_str()) {
                *last = text;
            }
        }
        next = e.source();
    }
    if parts.is_empty() {
        one_line(&error.to_string())
    } else {
        parts.join(": ")
    }
}

pub fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `client.call(..).await.on(&daemon)?`: the reply, or the call's one-line error.
pub trait CallResult<T> {
    fn on(self, daemon: &Daemon) -> anyhow::Result<T>;
}

impl<T> CallResult<T> for Result<tonic::Response<T>, Status> {
    fn on(self, daemon: &Daemon) -> anyhow::Result<T> {
        self.map(tonic::Response::into_inner)
            .map_err(|s| daemon.call_error(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_become_one_line_errors() {
        let d = Daemon::ingester("http://127.0.0.1:7601");
        let e = d.call_error(Status::invalid_argument(
            "prefix \"logs\" must end with \"/\"",
        ));
        assert_eq!(e.to_string(), r#"prefix "logs" must end with "/""#);
        let e = d.call_error(Status::unavailable("connection refused"));
        assert_eq!(
            e.to_string(),
            "cannot reach the ingester at http://127.0.0.1:7601: connection refused"
        );
        let e = d.call_error(Status::unauthenticated("bad token"));
        assert_eq!(
            e.to_string(),
            "the ingester refused the call: unauthenticated (check --auth-token-file)"
        );
        let e = d.call_error(Status::not_found("rule \"x\" not found\nmore"));
        assert_eq!(e.to_string(), "rule \"x\" not found more");
    }

    #[test]
    fn urls_get_a_scheme() {
        assert_eq!(
            Daemon::ingester("127.0.0.1:7601").url,
            "http://127.0.0.1:7601"
        );
        assert_eq!(Daemon::uploader("http://h:1/").url, "http://h:1");
    }

    #[test]
    fn token_file_errors_name_flag_and_path_not_content() {
        let dir = tempfile::tempdir().expect("tempdir");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "  \n").expect("write");
        let e = Auth::from_token_file(Some(&empty)).err().expect("refused");
        assert_eq!(
            e.to_string(),
            format!("--auth-token-file {} is empty", empty.display())
        );
        let missing = dir.path().join("missing");
        let e = Auth::from_token_file(Some(&missing))
            .err()
            .expect("refused");
        assert!(e.to_string().starts_with(&format!(
            "cannot read --auth-token-file {}",
            missing.display()
        )));

        let good = dir.path().join("tok");
        std::fs::write(&good, "s3cret-token\n").expect("write");
        let mut auth = Auth::from_token_file(Some(&good)).expect("ok");
        let req = auth.call(Request::new(())).expect("intercepted");
        assert_eq!(
            req.metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok()),
            Some("Bearer s3cret-token")
        );
        let mut none = Auth::default();
        let req = none.call(Request::new(())).expect("intercepted");
        assert!(req.metadata().get("authorization").is_none());
    }
}
