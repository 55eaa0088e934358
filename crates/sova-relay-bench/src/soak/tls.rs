//! The relay's TLS for a soak: a test CA and a certificate for 127.0.0.1, and the client
//! side that trusts that CA.

use std::sync::Arc;

use anyhow::Context as _;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use rustls::RootCertStore;
use sova_relay_testkit::TestPki;
use tokio_rustls::TlsConnector;

/// A fresh PKI (its files live as long as the value) and a connector trusting its CA.
pub fn set_up() -> anyhow::Result<(TestPki, TlsConnector)> {
    let pki = TestPki::try_new("soak").context("making the soak's test certificate")?;
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(&pki.ca).context("reading the soak's CA")? {
        roots.add(cert.context("the soak's CA")?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok((pki, TlsConnector::from(Arc::new(config))))
}
