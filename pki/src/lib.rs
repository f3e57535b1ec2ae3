//! Fleet PKI: mutual-TLS configurations for agents and trackers, and a development CA.
//!
//! Every agent and tracker holds a certificate issued by the fleet CA. Its first DNS
//! subject-alternative name is its [`PeerId`]; its IP SANs (if any) are the addresses it
//! may announce. [`Identity`] loads CA + certificate + key once and hands out rustls
//! configurations (TLS 1.3 only, ring provider) that *require* the other side to
//! present a certificate chaining to the same CA: a peer without one is refused during
//! the handshake, before any application byte.
//!
//! Nothing here skips verification; there is no `danger_*` switch. Development setups
//! use [`write_dev_pki`] / [`dev_pki`] to mint a throw-away CA instead.
//!
//! Non-goals: revocation (CRLs/OCSP) and certificate reloading; rotate by restarting
//! with new files (a CA file may hold several CAs during a rotation).

use std::fmt;
use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use shoal_proto::PeerId;
use x509_parser::extensions::GeneralName;

pub use dev::{DevCert, DevPki, dev_pki, write_dev_pki};

mod dev;

/// Why a PKI file, certificate or TLS configuration was refused. `what` names the file
/// (or the in-memory input); all of these are the operator's to fix, except
/// [`TlsError::Rustls`] inside a handshake, which is the peer's.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: cannot read: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("{path}: cannot write: {source}")]
    Write { path: PathBuf, source: io::Error },
    #[error("{what}: not valid PEM: {source}")]
    Pem { what: String, source: pem::Error },
    #[error("{what}: no CERTIFICATE block found")]
    NoCertificate { what: String },
    #[error("{what}: no PRIVATE KEY block found")]
    NoKey { what: String },
    #[error("{what}: CA certificate refused: {source}")]
    BadCa { what: String, source: rustls::Error },
    #[error("{what}: not a parsable X.509 certificate: {reason}")]
    BadCertificate { what: String, reason: String },
    #[error("{what}: {reason}")]
    NoPeerId { what: String, reason: String },
    #[error("{cert}: not valid under the CA in {ca}: {source}")]
    NotIssued {
        cert: String,
        ca: String,
        source: rustls::Error,
    },
    #[error("{key}: does not match the certificate in {cert}: {source}")]
    KeyMismatch {
        key: String,
        cert: String,
        source: rustls::Error,
    },
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("dev PKI: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("dev PKI: {0:?} is not a valid peer id (1-253 of [A-Za-z0-9._-])")]
    BadName(String),
}

/// This node's place in the fleet PKI: the CA it trusts, its certificate chain and key.
/// Cheap to clone.
#[derive(Clone)]
pub struct Identity {
    roots: Arc<RootCertStore>,
    chain: Vec<CertificateDer<'static>>,
    key: Arc<PrivateKeyDer<'static>>,
    peer_id: PeerId,
    provider: Arc<CryptoProvider>,
}

impl Identity {
    /// Loads PEM files: `ca` (one or more CA certificates), `cert` (this node's
    /// certificate, then any intermediates), `key` (its PKCS#8, PKCS#1 or SEC1 key).
    /// Checks that the certificate is currently valid under `ca` for its own peer id
    /// and that the key matches it, so a mix-up fails here and not at the first
    /// handshake.
    pub fn load(ca: &Path, cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let read = |p: &Path| {
            fs::read(p).map_err(|source| TlsError::Read {
                path: p.to_owned(),
                source,
            })
        };
        Self::parse(
            (&ca.display().to_string(), &read(ca)?),
            (&cert.display().to_string(), &read(cert)?),
            (&key.display().to_string(), &read(key)?),
        )
    }

    /// As [`Identity::load`], from PEM text held in memory (tests, the demo).
    pub fn from_pem(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Self, TlsError> {
        Self::parse(
            ("CA PEM", ca_pem.as_bytes()),
            ("certificate PEM", cert_pem.as_bytes()),
            ("key PEM", key_pem.as_bytes()),
        )
    }

    fn parse(
        (ca_name, ca): (&str, &[u8]),
        (cert_name, cert): (&str, &[u8]),
        (key_name, key): (&str, &[u8]),
    ) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        for der in certs(ca_name, ca)? {
            roots.add(der).map_err(|source| TlsError::BadCa {
                what: ca_name.to_owned(),
                source,
            })?;
        }
        let chain = certs(cert_name, cert)?;
        let key = PrivateKeyDer::from_pem_slice(key).map_err(|source| match source {
            pem::Error::NoItemsFound => TlsError::NoKey {
                what: key_name.to_owned(),
            },
            source => TlsError::Pem {
                what: key_name.to_owned(),
                source,
            },
        })?;
        // `certs` never returns an empty list.
        let leaf = &chain[0];
        let peer_id = peer_id_of(leaf).map_err(|e| rename(e, cert_name))?;

        let name = ServerName::try_from(peer_id.as_str().to_owned())
            .map_err(|e| TlsError::Rustls(rustls::Error::General(e.to_string())))?;
        let not_issued = |source| TlsError::NotIssued {
            cert: cert_name.to_owned(),
            ca: ca_name.to_owned(),
            source,
        };
        let parsed = rustls::server::ParsedCertificate::try_from(leaf).map_err(not_issued)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &roots,
            &chain[1..],
            UnixTime::now(),
            provider.signature_verification_algorithms.all,
        )
        .and_then(|()| rustls::client::verify_server_name(&parsed, &name))
        .map_err(not_issued)?;
        rustls::sign::CertifiedKey::from_der(chain.clone(), key.clone_key(), &provider).map_err(
            |source| TlsError::KeyMismatch {
                key: key_name.to_owned(),
                cert: cert_name.to_owned(),
                source,
            },
        )?;
        Ok(Self {
            roots: Arc::new(roots),
            chain,
            key: Arc::new(key),
            peer_id,
            provider,
        })
    }

    /// This node's peer id: the first DNS name of its certificate.
    pub fn peer_id(&self) -> PeerId {
        self.peer_id.clone()
    }

    /// This node's certificate chain, leaf first.
    pub fn chain(&self) -> &[CertificateDer<'static>] {
        &self.chain
    }

    /// A server configuration that presents our chain and refuses any client without a
    /// certificate chaining to the fleet CA. `alpn`: accepted protocols, in preference
    /// order (empty = no ALPN).
    pub fn server_config(&self, alpn: &[&[u8]]) -> Result<ServerConfig, TlsError> {
        let verifier =
            WebPkiClientVerifier::builder_with_provider(self.roots.clone(), self.provider.clone())
                .build()?;
        let mut cfg = ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(cfg)
    }

    /// A client configuration that presents our chain and accepts only servers whose
    /// certificate chains to the fleet CA and names the server name the caller dials
    /// (a peer's [`PeerId`], or the tracker's host name or IP).
    pub fn client_config(&self, alpn: &[&[u8]]) -> Result<ClientConfig, TlsError> {
        let mut cfg = ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_root_certificates(self.roots.clone())
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(cfg)
    }
}

/// The peer id a certificate names: its first DNS subject-alternative name.
pub fn peer_id_of(cert: &CertificateDer<'_>) -> Result<PeerId, TlsError> {
    let what = "certificate";
    let (_, x509) =
        x509_parser::parse_x509_certificate(cert).map_err(|e| TlsError::BadCertificate {
            what: what.to_owned(),
            reason: e.to_string(),
        })?;
    let san = x509
        .subject_alternative_name()
        .map_err(|e| TlsError::BadCertificate {
            what: what.to_owned(),
            reason: format!("subjectAltName: {e}"),
        })?;
    let dns = san
        .iter()
        .flat_map(|s| s.value.general_names.iter())
        .find_map(|g| match g {
            GeneralName::DNSName(n) => Some(*n),
            _ => None,
        })
        .ok_or_else(|| TlsError::NoPeerId {
            what: what.to_owned(),
            reason: "has no DNS subject-alternative name to use as peer id".to_owned(),
        })?;
    dns.parse().map_err(|e| TlsError::NoPeerId {
        what: what.to_owned(),
        reason: format!("first DNS name is not a peer id: {e}"),
    })
}

/// The IP subject-alternative names of a certificate (empty if it cannot be parsed):
/// the addresses its holder may announce.
pub fn ip_sans_of(cert: &CertificateDer<'_>) -> Vec<IpAddr> {
    let Ok((_, x509)) = x509_parser::parse_x509_certificate(cert) else {
        return Vec::new();
    };
    let Ok(Some(san)) = x509.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|g| match g {
            GeneralName::IPAddress(b) => match b.len() {
                4 => <[u8; 4]>::try_from(*b).ok().map(IpAddr::from),
                16 => <[u8; 16]>::try_from(*b).ok().map(IpAddr::from),
                _ => None,
            },
            _ => None,
        })
        .collect()
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("peer_id", &self.peer_id)
            .field("chain_len", &self.chain.len())
            .field("roots", &self.roots.len())
            .finish_non_exhaustive()
    }
}

/// Every CERTIFICATE block of `pem`; at least one.
fn certs(what: &str, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::Pem {
            what: what.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what: what.to_owned(),
        });
    }
    Ok(certs)
}

/// Puts the file name into errors that only knew "certificate".
fn rename(e: TlsError, what: &str) -> TlsError {
    match e {
        TlsError::BadCertificate { reason, .. } => TlsError::BadCertificate {
            what: what.to_owned(),
            reason,
        },
        TlsError::NoPeerId { reason, .. } => TlsError::NoPeerId {
            what: what.to_owned(),
            reason,
        },
        other => other,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests;
