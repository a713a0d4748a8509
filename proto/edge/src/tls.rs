//! Optional TLS (rustls, aws-lc) for the gRPC control plane: the daemons' servers (`tls_cert` +
//! `tls_key`) and the clients (uploader → ingester, ctl → daemons) that verify them against a
//! CA file or, without one, the system's trust store.
//!
//! Every PEM file is read and checked here, at start-up, so a missing, unreadable or malformed
//! file stops the process with an error naming the key (or flag) and the path — never a panic
//! or a failure on the first connection.

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// Why TLS cannot be set up. The message starts with the key or flag at fault ([`TlsError::key`])
/// and names the path; the messages are what operators see at start-up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls_key is missing: tls_cert ({}) needs its private key, or set neither", cert.display())]
    KeyMissing { cert: PathBuf },
    #[error("tls_cert is missing: tls_key ({}) needs its certificate, or set neither", key.display())]
    CertMissing { key: PathBuf },
    // `error` and not `source`: the cause is part of the one-line message, not a chain to walk.
    #[error("{what} {}: cannot read it: {error}", path.display())]
    Unreadable {
        what: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{what} {}: not valid PEM ({reason})", path.display())]
    NotPem {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{what} {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it", path.display())]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error("tls_key {}: no usable PEM private key in it ({reason})", path.display())]
    NoPrivateKey { path: PathBuf, reason: String },
    #[error("tls_cert {} / tls_key {}: {reason}", cert.display(), key.display())]
    KeyDoesNotFit {
        cert: PathBuf,
        key: PathBuf,
        reason: String,
    },
    #[error("no CA file given and no system CA certificates found")]
    NoSystemRoots,
}

impl TlsError {
    /// The config key or flag the error is about; `None` when no setting is at fault.
    pub fn key(&self) -> Option<&'static str> {
        match self {
            TlsError::KeyMissing { .. } | TlsError::NoPrivateKey { .. } => Some("tls_key"),
            TlsError::CertMissing { .. } | TlsError::KeyDoesNotFit { .. } => Some("tls_cert"),
            TlsError::Unreadable { what, .. }
            | TlsError::NotPem { what, .. }
            | TlsError::NoCertificate { what, .. } => Some(what),
            TlsError::NoSystemRoots => None,
        }
    }
}

/// A server identity that has been read and checked, with the paths it came from (for logs).
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub config: ServerTlsConfig,
}

/// `tls_cert` and `tls_key` go together: both (TLS) or neither (plain HTTP/2). The error names
/// the one that is missing.
pub fn server_from_keys(
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
) -> Result<Option<ServerTls>, TlsError> {
    let cert = cert.filter(|p| !p.as_os_str().is_empty());
    let key = key.filter(|p| !p.as_os_str().is_empty());
    match (cert, key) {
        (None, None) => Ok(None),
        (Some(cert), None) => Err(TlsError::KeyMissing { cert }),
        (None, Some(key)) => Err(TlsError::CertMissing { key }),
        (Some(cert), Some(key)) => {
            let config = server_config(&cert, &key)?;
            Ok(Some(ServerTls { cert, key, config }))
        }
    }
}

/// Reads the certificate chain and the key, and checks that the key belongs to the certificate.
pub fn server_config(cert: &Path, key: &Path) -> Result<ServerTlsConfig, TlsError> {
    install_crypto_provider();
    let cert_pem = read("tls_cert", cert)?;
    let chain = certificates("tls_cert", cert, &cert_pem)?;
    let key_pem = read("tls_key", key)?;
    let private = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::NoPrivateKey {
        path: key.to_path_buf(),
        reason: e.to_string(),
    })?;
    rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(|e| TlsError::KeyDoesNotFit {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            reason: e.to_string(),
        })?;
    Ok(ServerTlsConfig::new().identity(Identity::from_pem(cert_pem, key_pem)))
}

/// The client side of an `https://` URL. `ca` is `(what, path)`, `what` naming the key or flag
/// it came from (`ingester_ca`, `--ca-file`); without it the system's trust store is used.
/// `domain` overrides the name checked against the certificate (and sent as SNI).
pub fn client_config(
    ca: Option<(&'static str, &Path)>,
    domain: Option<&str>,
) -> Result<ClientTlsConfig, TlsError> {
    install_crypto_provider();
    let mut config = ClientTlsConfig::new();
    match ca {
        Some((what, path)) => {
            let pem = read(what, path)?;
            certificates(what, path, &pem)?;
            config = config.ca_certificate(Certificate::from_pem(pem));
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            if found.certs.is_empty() {
                return Err(TlsError::NoSystemRoots);
            }
            config = config.with_native_roots();
        }
    }
    if let Some(domain) = domain.map(str::trim).filter(|d| !d.is_empty()) {
        config = config.domain_name(domain);
    }
    Ok(config)
}

/// The process-wide rustls provider: aws-lc (already linked for the AWS SDK). Only the first
/// call installs it; later ones, and a provider installed by someone else, are left alone.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::Unreadable {
        what,
        path: path.to_path_buf(),
        error,
    })
}

fn certificates(
    what: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::NotPem {
            what,
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_or_neither_and_the_missing_one_is_named() {
        assert!(matches!(server_from_keys(None, None), Ok(None)));
        let e = server_from_keys(Some("/c.pem".into()), None).expect_err("no key");
        assert!(e.to_string().starts_with("tls_key is missing"), "{e}");
        assert_eq!(e.key(), Some("tls_key"));
        let e = server_from_keys(None, Some("/k.pem".into())).expect_err("no cert");
        assert!(e.to_string().starts_with("tls_cert is missing"), "{e}");
        assert_eq!(e.key(), Some("tls_cert"));
        // Empty (an env var set to "") counts as unset.
        assert!(matches!(
            server_from_keys(Some("".into()), Some("".into())),
            Ok(None)
        ));
    }

    #[test]
    fn unreadable_and_garbage_files_are_named() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        let missing = dir.path().join("missing.pem");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not a certificate\n")?;
        let e = server_config(&missing, &garbage)
            .expect_err("unreadable")
            .to_string();
        assert!(
            e.starts_with(&format!("tls_cert {}: cannot read it: ", missing.display())),
            "{e}"
        );
        let e = server_config(&garbage, &missing)
            .expect_err("garbage")
            .to_string();
        assert!(
            e.starts_with(&format!(
                "tls_cert {}: no PEM certificate",
                garbage.display()
            )),
            "{e}"
        );
        let e = client_config(Some(("--ca-file", &garbage)), None).expect_err("garbage");
        assert_eq!(e.key(), Some("--ca-file"));
        let e = e.to_string();
        assert!(
            e.starts_with(&format!(
                "--ca-file {}: no PEM certificate",
                garbage.display()
            )),
            "{e}"
        );
        let e = client_config(Some(("ingester_ca", &missing)), None).expect_err("missing");
        assert!(e.to_string().starts_with("ingester_ca "), "{e}");
        Ok(())
    }
}
