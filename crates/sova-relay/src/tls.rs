//! TLS on the relay's port: certificate loading (PEM, via rustls-pki-types), the `ring`
//! provider chosen explicitly, TLS 1.2 minimum, and reload without dropping connections.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context};
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

/// The current certificate and key, swappable while connections are open: a handshake
/// uses the configuration current when it starts.
pub(crate) struct Tls {
    cert_path: PathBuf,
    key_path: PathBuf,
    config: Mutex<Arc<ServerConfig>>,
}

impl Tls {
    /// Loads the certificate chain and key; fails with a reason naming the file.
    pub(crate) fn load(cert_path: &Path, key_path: &Path) -> anyhow::Result<Tls> {
        Ok(Tls {
            config: Mutex::new(Arc::new(server_config(cert_path, key_path)?)),
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
        })
    }

    /// Re-reads both files; on failure the current certificate stays in use.
    pub(crate) fn reload(&self) -> anyhow::Result<()> {
        let fresh = Arc::new(server_config(&self.cert_path, &self.key_path)?);
        *self.config.lock().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }

    /// An acceptor with the current certificate.
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(
            self.config
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
        )
    }
}

fn server_config(cert_path: &Path, key_path: &Path) -> anyhow::Result<ServerConfig> {
    let certs = CertificateDer::pem_file_iter(cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("cannot read TLS certificate {}", cert_path.display()))?;
    if certs.is_empty() {
        bail!("no certificate found in {}", cert_path.display());
    }
    let key = PrivateKeyDer::from_pem_file(key_path)
        .with_context(|| format!("cannot read TLS key {}", key_path.display()))?;
    // One provider, named here: with two compiled in, rustls' default builder panics.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .with_context(|| {
            format!(
                "TLS certificate {} does not match key {}",
                cert_path.display(),
                key_path.display()
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}
