//! The development CA: throw-away certificates for tests, demos and local fleets.

use std::fmt;
use std::fs;
use std::io::Write;
use std::net::IpAddr;
use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::CertificateDer;
use shoal_proto::PeerId;

use super::{Identity, TlsError};

/// A development CA and certificates minted by [`dev_pki`], as PEM and DER.
#[derive(Clone)]
pub struct DevPki {
    pub ca_pem: String,
    pub ca_key_pem: String,
    pub ca_der: CertificateDer<'static>,
    /// One per requested name, in order.
    pub certs: Vec<DevCert>,
}

/// One certificate of a [`DevPki`].
#[derive(Clone)]
pub struct DevCert {
    pub name: PeerId,
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: CertificateDer<'static>,
}

impl DevPki {
    /// The identity of the `i`-th name.
    pub fn identity(&self, i: usize) -> Result<Identity, TlsError> {
        let c = self.certs.get(i).ok_or_else(|| TlsError::NoCertificate {
            what: format!("dev PKI entry {i}"),
        })?;
        Identity::from_pem(&self.ca_pem, &c.cert_pem, &c.key_pem)
    }
}

/// Mints a development CA and one certificate per name (DNS SAN = name, plus
/// `ips[i]` as IP SANs; `ips` may be shorter than `names`). Certificates are valid for
/// both server and client authentication, from 1975 to 4096: this is for tests and
/// demos, not production.
pub fn dev_pki(names: &[String], ips: &[Vec<IpAddr>]) -> Result<DevPki, TlsError> {
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::default();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name = rcgen::DistinguishedName::new();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "Shoal development CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, &ca_key);
    let mut certs = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let peer: PeerId = name
            .parse()
            .map_err(|_| TlsError::BadName(name.chars().take(80).collect()))?;
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, name.as_str());
        p.subject_alt_names = vec![SanType::DnsName(name.as_str().try_into()?)];
        p.subject_alt_names.extend(
            ips.get(i)
                .into_iter()
                .flatten()
                .map(|ip| SanType::IpAddress(*ip)),
        );
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        p.use_authority_key_identifier_extension = true;
        let cert = p.signed_by(&key, &issuer)?;
        certs.push(DevCert {
            name: peer,
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
        });
    }
    Ok(DevPki {
        ca_pem: ca_cert.pem(),
        ca_key_pem: ca_key.serialize_pem(),
        ca_der: ca_cert.der().clone(),
        certs,
    })
}

/// [`dev_pki`] written to `out` (created if missing): `ca.pem`, `ca.key.pem`,
/// `<name>.pem`, `<name>.key.pem`. Key files are created with mode 0600.
pub fn write_dev_pki(out: &Path, names: &[String], ips: &[Vec<IpAddr>]) -> Result<(), TlsError> {
    let pki = dev_pki(names, ips)?;
    fs::create_dir_all(out).map_err(|source| TlsError::Write {
        path: out.to_owned(),
        source,
    })?;
    write_file(&out.join("ca.pem"), &pki.ca_pem, false)?;
    write_file(&out.join("ca.key.pem"), &pki.ca_key_pem, true)?;
    for c in &pki.certs {
        write_file(&out.join(format!("{}.pem", c.name)), &c.cert_pem, false)?;
        write_file(&out.join(format!("{}.key.pem", c.name)), &c.key_pem, true)?;
    }
    Ok(())
}

impl fmt::Debug for DevPki {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<_> = self.certs.iter().map(|c| &c.name).collect();
        f.debug_struct("DevPki")
            .field("certs", &names)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for DevCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DevCert")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn write_file(path: &Path, text: &str, secret: bool) -> Result<(), TlsError> {
    let err = |source| TlsError::Write {
        path: path.to_owned(),
        source,
    };
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        opts.mode(0o600);
        // The mode above only applies to new files; tighten an existing one first.
        if path.exists() {
            fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(err)?;
        }
    }
    #[cfg(not(unix))]
    let _ = secret;
    let mut f = opts.open(path).map_err(err)?;
    f.write_all(text.as_bytes()).map_err(err)?;
    f.sync_all().map_err(err)
}
