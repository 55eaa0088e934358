//! Test support shared by the workspace's test suites and the bench's soak: what more than
//! one crate's tests need and that is not the product's own code.

use std::path::PathBuf;

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};

/// A CA, and a relay certificate it signed for `localhost` and 127.0.0.1, as PEM files in a
/// fresh directory removed on drop.
pub struct TestPki {
    dir: PathBuf,
    /// The CA certificate, for a client's trusted roots.
    pub ca: PathBuf,
    /// The relay's certificate, for `--tls-cert`.
    pub cert: PathBuf,
    /// Its private key, for `--tls-key`.
    pub key: PathBuf,
}

impl TestPki {
    /// Generates the CA and the certificate; `label` names the directory.
    ///
    /// # Panics
    /// If the files cannot be written: the test cannot run.
    #[allow(clippy::expect_used)] // test support: a failure here fails the test, as it should
    pub fn new(label: &str) -> Self {
        Self::try_new(label).expect("writing the test PKI")
    }

    /// [`TestPki::new`], for a program that reports the failure instead of panicking.
    ///
    /// # Errors
    /// If a key or certificate cannot be made or its file written.
    pub fn try_new(label: &str) -> std::io::Result<Self> {
        let dir = std::env::temp_dir().join(format!("sova-{label}-pki-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir)?;
        let pki = Self {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            dir,
        };
        // From here on, a failure removes the directory (drop).
        let (ca, cert, key) = generate().map_err(std::io::Error::other)?;
        std::fs::write(&pki.ca, ca)?;
        std::fs::write(&pki.cert, cert)?;
        std::fs::write(&pki.key, key)?;
        Ok(pki)
    }
}

/// A CA, and a certificate it signed for `localhost` and 127.0.0.1, with its key (PEM).
fn generate() -> Result<(String, String, String), rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
    let key = KeyPair::generate()?;
    let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    let cert = CertificateParams::new(names)?.signed_by(&key, &issuer)?;
    Ok((issuer.pem(), cert.pem(), key.serialize_pem()))
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
