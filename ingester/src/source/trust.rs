//! What the ingester trusts in a `pulsar+ssl://` broker's certificate, for rules' consumers and
//! restore producers alike: the public roots pulsar-rs verifies against (webpki-roots, Mozilla's
//! list), plus the CA certificates of `pulsar_ca_file` for a cluster with a private CA. The
//! broker's name is always verified against its certificate (rustls has no switch to skip it,
//! and pulsar-rs's rustls build none either).

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::CertificateDer;

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("pulsar_ca_file {path}: {detail}")]
    CaFile { path: String, detail: String },
    #[error("TLS client configuration: {0}")]
    Config(String),
}

/// The extra CA certificates (PEM) trusted for `pulsar+ssl://` brokers; none by default.
#[derive(Clone, Default)]
pub struct PulsarTrust {
    ca_pem: Option<Arc<Vec<u8>>>,
}

impl std::fmt::Debug for PulsarTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PulsarTrust")
            .field("ca_pem_bytes", &self.ca_pem.as_ref().map(|p| p.len()))
            .finish()
    }
}

impl PulsarTrust {
    /// Reads `path`, which must hold at least one PEM certificate; checked at start so a wrong
    /// file is named then, not at the first TLS connection.
    pub fn from_file(path: &Path) -> Result<PulsarTrust, TrustError> {
        let err = |detail: String| TrustError::CaFile {
            path: path.display().to_string(),
            detail,
        };
        let pem = std::fs::read(path).map_err(|e| err(format!("cannot read it: {e}")))?;
        let certs = parse(&pem).map_err(err)?;
        if certs.is_empty() {
            return Err(err("holds no PEM certificate".into()));
        }
        Ok(PulsarTrust {
            ca_pem: Some(Arc::new(pem)),
        })
    }

    /// The CA file's PEM, for pulsar-rs's `with_certificate_chain`.
    pub fn ca_pem(&self) -> Option<&[u8]> {
        self.ca_pem.as_deref().map(Vec::as_slice)
    }

    /// A rustls client configuration trusting what pulsar-rs trusts plus the CA file.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, TrustError> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        if let Some(pem) = &self.ca_pem {
            for cert in parse(pem).map_err(TrustError::Config)? {
                roots
                    .add(cert)
                    .map_err(|e| TrustError::Config(format!("pulsar_ca_file: {e}")))?;
            }
        }
        // The provider named rather than the process default: pulsar-rs builds rustls with
        // aws-lc-rs, and naming it keeps this independent of which providers are compiled in.
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TrustError::Config(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Arc::new(config))
    }
}

fn parse(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not PEM certificates: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_must_hold_a_certificate() -> anyhow::Result<()> {
        let dir = tempfile::tempdir()?;
        let missing = dir.path().join("missing.pem");
        let err = PulsarTrust::from_file(&missing)
            .err()
            .map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("missing.pem: cannot read it")),
            "{err:?}"
        );
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "no certificate here\n")?;
        let err = PulsarTrust::from_file(&empty).err().map(|e| e.to_string());
        assert!(
            err.as_deref()
                .is_some_and(|e| e.contains("holds no PEM certificate")),
            "{err:?}"
        );
        // Without a CA file the public roots alone are trusted.
        assert!(PulsarTrust::default().ca_pem().is_none());
        assert!(PulsarTrust::default().client_config().is_ok());
        Ok(())
    }
}
