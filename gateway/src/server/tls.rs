//! TLS with ALPN (`h2`, `http/1.1`) and optional client certificates.
//!
//! A client certificate is a credential like a bearer token: the rules map
//! a token's SHA-256 to a grant, and a certificate's SHA-256 fingerprint
//! (`openssl x509 -outform der | sha256sum`) is looked up in the same map.
//! So a tenant that authenticates by certificate lists the fingerprint as
//! one of its tokens; rotating it is a rules reload, like a token. With a
//! client CA configured, a presented certificate must chain to it;
//! presenting none is allowed (the request then needs a bearer token)
//! unless `require_client_cert` is set.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::server::WebPkiClientVerifier;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};
use tokio_rustls::TlsAcceptor;

use crate::Error;

/// Where the PEM files are.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// CA bundle that client certificates must chain to; enables mTLS.
    pub client_ca: Option<PathBuf>,
    pub require_client_cert: bool,
}

/// A ready acceptor.
#[derive(Clone)]
pub struct TlsSetup {
    pub acceptor: TlsAcceptor,
}

impl std::fmt::Debug for TlsSetup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TlsSetup(..)")
    }
}

fn tls_err(path: &Path, what: impl std::fmt::Display) -> Error {
    Error::Tls(format!("{}: {what}", path.display()))
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, Error> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| tls_err(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_err(path, e))?;
    if certs.is_empty() {
        return Err(tls_err(path, "no PEM certificate in the file"));
    }
    Ok(certs)
}

impl TlsSetup {
    /// Loads the files and builds the server config. Errors name the file.
    pub fn load(files: &TlsFiles) -> Result<TlsSetup, Error> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let chain = certs(&files.cert)?;
        let key = PrivateKeyDer::from_pem_file(&files.key).map_err(|e| tls_err(&files.key, e))?;
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::Tls(e.to_string()))?;
        let builder = match &files.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                for c in certs(ca)? {
                    roots.add(c).map_err(|e| tls_err(ca, e))?;
                }
                let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
                let v = if files.require_client_cert {
                    v
                } else {
                    v.allow_unauthenticated()
                };
                builder.with_client_cert_verifier(v.build().map_err(|e| tls_err(ca, e))?)
            }
        };
        let mut cfg = builder
            .with_single_cert(chain, key)
            .map_err(|e| tls_err(&files.cert, e))?;
        cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(TlsSetup {
            acceptor: TlsAcceptor::from(Arc::new(cfg)),
        })
    }
}

/// The SHA-256 fingerprint of the verified client certificate, if any.
pub(super) fn client_cert_sha256(conn: &rustls::ServerConnection) -> Option<[u8; 32]> {
    let leaf = conn.peer_certificates()?.first()?;
    Some(Sha256::digest(leaf.as_ref()).into())
}
