//! Throwaway TLS material for tests: a CA and a server certificate it signed for `localhost`
//! and the IP 127.0.0.1, made at run time with rcgen (nothing is checked in).

use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// A CA and one server certificate (for `localhost` and 127.0.0.1) signed by it.
pub struct TestCerts {
    /// The CA certificate, PEM: what clients must trust.
    pub ca_pem: String,
    pub cert_pem: String,
    pub key_pem: String,
    /// The server certificate and its PKCS#8 key, DER, for an in-process rustls server.
    pub cert_der: Vec<u8>,
    pub key_der: Vec<u8>,
}

/// Where [`TestCerts::write`] put the PEM files.
pub struct CertFiles {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCerts {
    /// A fresh CA named `ca_name` and a server certificate named `server_name`.
    pub fn generate(ca_name: &str, server_name: &str) -> anyhow::Result<TestCerts> {
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, ca_name);
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca_key = KeyPair::generate()?;
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
        params
            .distinguished_name
            .push(DnType::CommonName, server_name);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &issuer)?;
        Ok(TestCerts {
            ca_pem: ca_cert.pem(),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().to_vec(),
            key_der: key.serialize_der(),
        })
    }

    /// Writes `ca.pem`, `server.crt` and `server.key` into `dir`.
    pub fn write(&self, dir: &Path) -> anyhow::Result<CertFiles> {
        let files = CertFiles {
            ca: dir.join("ca.pem"),
            cert: dir.join("server.crt"),
            key: dir.join("server.key"),
        };
        for (path, pem) in [
            (&files.ca, &self.ca_pem),
            (&files.cert, &self.cert_pem),
            (&files.key, &self.key_pem),
        ] {
            std::fs::write(path, pem).with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(files)
    }
}
