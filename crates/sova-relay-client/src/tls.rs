//! TLS for `tls://` and `wss://` addresses: rustls with the `ring` provider, Mozilla's roots
//! (webpki-roots) plus an optional CA file, and the address's host as the server name.

use std::io;
use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::RootCertStore;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::ClientError;

/// ALPN protocol of a WebSocket upgrade, so that a TLS-terminating proxy routes it as HTTP/1.1.
const ALPN_HTTP1: &[u8] = b"http/1.1";

/// Everything one TLS connection attempt needs; built once per client, cheap to clone.
#[derive(Clone)]
pub(crate) struct TlsTarget {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl std::fmt::Debug for TlsTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTarget")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl TlsTarget {
    /// Trust Mozilla's roots and the certificates of `ca_file`; verify the relay as `host`.
    /// `websocket` adds the ALPN of an HTTP/1.1 upgrade.
    pub(crate) fn new(
        host: &str,
        ca_file: Option<&Path>,
        websocket: bool,
    ) -> Result<Self, ClientError> {
        let name = server_name(host)
            .ok_or_else(|| ClientError::Tls(format!("'{host}' is not a valid TLS server name")))?;
        let mut roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Some(path) = ca_file {
            for cert in read_certificates(path)? {
                roots.add(cert).map_err(|err| {
                    ClientError::Tls(format!("CA file {}: {err}", path.display()))
                })?;
            }
        }
        // The provider is named explicitly: with two compiled in, rustls could not choose.
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|err| ClientError::Tls(err.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        if websocket {
            config.alpn_protocols = vec![ALPN_HTTP1.to_vec()];
        }
        Ok(Self {
            connector: TlsConnector::from(Arc::new(config)),
            name,
        })
    }

    /// The TLS handshake over `tcp`; the caller bounds its time. A certificate the client
    /// does not trust, or a relay that does not speak TLS, is a [`ClientError::Tls`].
    pub(crate) async fn connect(
        &self,
        tcp: TcpStream,
    ) -> Result<TlsStream<TcpStream>, ClientError> {
        self.connector
            .connect(self.name.clone(), tcp)
            .await
            .map_err(|err| handshake_error(&self.name, err))
    }
}

/// `host` as a server name: an IP address (IPv6 possibly in brackets) or a DNS name.
fn server_name(host: &str) -> Option<ServerName<'static>> {
    let bare = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    ServerName::try_from(bare.to_owned()).ok()
}

/// Every certificate of a PEM file; none at all is an error (most likely the wrong file).
fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, ClientError> {
    let fail = |reason: String| ClientError::Tls(format!("CA file {}: {reason}", path.display()));
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|err| fail(err.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| fail(err.to_string()))?;
    if certs.is_empty() {
        return Err(fail("no PEM certificate in it".to_owned()));
    }
    Ok(certs)
}

/// rustls reports its own errors inside `io::Error`s; those (a certificate, an alert, a
/// relay answering in plaintext) become [`ClientError::Tls`], the rest stay I/O errors
/// (a connection reset is worth retrying).
fn handshake_error(name: &ServerName<'_>, err: io::Error) -> ClientError {
    let Some(tls) = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    else {
        return ClientError::Io(err);
    };
    let hint = match tls {
        rustls::Error::InvalidMessage(_) => " (does the relay have TLS enabled?)",
        rustls::Error::InvalidCertificate(_) => {
            " (trust the relay's CA: ca_file, or --ca in the CLI)"
        }
        _ => "",
    };
    ClientError::Tls(format!(
        "TLS handshake with {} failed: {tls}{hint}",
        name.to_str()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_come_from_hosts() {
        assert!(matches!(
            server_name("relay.example"),
            Some(ServerName::DnsName(_))
        ));
        assert!(matches!(
            server_name("127.0.0.1"),
            Some(ServerName::IpAddress(_))
        ));
        assert!(matches!(
            server_name("[::1]"),
            Some(ServerName::IpAddress(_))
        ));
        assert!(server_name("bad name").is_none());
    }

    #[test]
    fn a_missing_or_empty_ca_file_is_a_clear_error() {
        let missing = Path::new("/nonexistent/ca.pem");
        let err = TlsTarget::new("localhost", Some(missing), false).unwrap_err();
        assert!(
            matches!(&err, ClientError::Tls(m) if m.contains("/nonexistent/ca.pem")),
            "{err}"
        );
        let empty = std::env::temp_dir().join(format!("sova-empty-ca-{}.pem", std::process::id()));
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = TlsTarget::new("localhost", Some(&empty), false).unwrap_err();
        std::fs::remove_file(&empty).unwrap();
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
    }
}
