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
    #[allow(clippy::unwrap_used)] // test support: a failure here fails the test, as it should
    pub fn new(label: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("sova-{label}-pki-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        let key = KeyPair::generate().unwrap();
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        let pki = Self {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
            dir,
        };
        std::fs::write(&pki.ca, issuer.pem()).unwrap();
        std::fs::write(&pki.cert, cert.pem()).unwrap();
        std::fs::write(&pki.key, key.serialize_pem()).unwrap();
        pki
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
