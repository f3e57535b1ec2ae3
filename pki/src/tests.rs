//! Tests of the fleet PKI helpers: files, errors, and in-memory handshakes.

use rcgen::{CertificateParams, KeyPair};
use rustls::{ClientConnection, ServerConnection};

use super::*;

const ALPN: &[&[u8]] = &[b"shoal/1"];

fn names(n: &[&str]) -> Vec<String> {
    n.iter().map(|s| s.to_string()).collect()
}

/// Which side gave up on the handshake, and why.
#[derive(Debug)]
enum Refused {
    Client(rustls::Error),
    Server(rustls::Error),
}

/// Pumps TLS records between the two sides, without sockets, until both finish
/// or one side refuses.
fn handshake(
    client: ClientConfig,
    server: ServerConfig,
    server_name: &str,
) -> Result<(ClientConnection, ServerConnection), Refused> {
    let name = ServerName::try_from(server_name.to_owned()).unwrap();
    let mut c = ClientConnection::new(Arc::new(client), name).unwrap();
    let mut s = ServerConnection::new(Arc::new(server)).unwrap();
    for _ in 0..20 {
        let mut buf = Vec::new();
        while c.wants_write() {
            c.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            s.read_tls(&mut rd).unwrap();
        }
        s.process_new_packets().map_err(Refused::Server)?;
        let mut buf = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut buf).unwrap();
        }
        let mut rd = &buf[..];
        while !rd.is_empty() {
            c.read_tls(&mut rd).unwrap();
        }
        c.process_new_packets().map_err(Refused::Client)?;
        if !c.is_handshaking() && !s.is_handshaking() {
            return Ok((c, s));
        }
    }
    panic!("handshake did not finish");
}

#[test]
fn generated_pki_loads_from_files() {
    let dir = tempfile::tempdir().unwrap();
    let ip: IpAddr = "127.0.0.7".parse().unwrap();
    write_dev_pki(
        dir.path(),
        &names(&["agent-1", "tracker"]),
        &[vec![], vec![ip]],
    )
    .unwrap();
    let p = |f: &str| dir.path().join(f);
    let a = Identity::load(&p("ca.pem"), &p("agent-1.pem"), &p("agent-1.key.pem")).unwrap();
    assert_eq!(a.peer_id().as_str(), "agent-1");
    assert!(ip_sans_of(&a.chain()[0]).is_empty());
    let t = Identity::load(&p("ca.pem"), &p("tracker.pem"), &p("tracker.key.pem")).unwrap();
    assert_eq!(ip_sans_of(&t.chain()[0]), vec![ip]);
    assert_eq!(peer_id_of(&t.chain()[0]).unwrap().as_str(), "tracker");
    #[cfg(unix)]
    for f in ["ca.key.pem", "agent-1.key.pem", "tracker.key.pem"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(p(f)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{f}");
    }
    // Rewriting over existing files works and keeps keys private.
    write_dev_pki(dir.path(), &names(&["agent-1"]), &[]).unwrap();
    assert!(format!("{a:?}").contains("agent-1"));
}

#[test]
fn load_errors_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    write_dev_pki(dir.path(), &names(&["a", "b"]), &[]).unwrap();
    let other = tempfile::tempdir().unwrap();
    write_dev_pki(other.path(), &names(&["a"]), &[]).unwrap();
    let p = |f: &str| dir.path().join(f);
    let e = Identity::load(&p("ca.pem"), &p("missing.pem"), &p("a.key.pem")).unwrap_err();
    assert!(
        matches!(e, TlsError::Read { .. }) && e.to_string().contains("missing.pem"),
        "{e}"
    );
    let e = Identity::load(&p("ca.pem"), &p("a.pem"), &p("b.key.pem")).unwrap_err();
    assert!(
        matches!(e, TlsError::KeyMismatch { .. }) && e.to_string().contains("b.key.pem"),
        "{e}"
    );
    let e = Identity::load(&other.path().join("ca.pem"), &p("a.pem"), &p("a.key.pem")).unwrap_err();
    assert!(
        matches!(e, TlsError::NotIssued { .. }) && e.to_string().contains("a.pem"),
        "{e}"
    );
    let e = Identity::load(&p("a.key.pem"), &p("a.pem"), &p("a.key.pem")).unwrap_err();
    assert!(
        matches!(e, TlsError::NoCertificate { .. }) && e.to_string().contains("a.key.pem"),
        "{e}"
    );
    let e = Identity::load(&p("ca.pem"), &p("a.pem"), &p("a.pem")).unwrap_err();
    assert!(matches!(e, TlsError::NoKey { .. }), "{e}");
    // A section that never ends is bad PEM, for certificates and for keys alike.
    fs::write(p("cut.pem"), "-----BEGIN CERTIFICATE-----\nAAAA\n").unwrap();
    fs::write(p("cut.key.pem"), "-----BEGIN PRIVATE KEY-----\nAAAA\n").unwrap();
    let e = Identity::load(&p("ca.pem"), &p("cut.pem"), &p("a.key.pem")).unwrap_err();
    assert!(
        matches!(e, TlsError::Pem { .. }) && e.to_string().contains("cut.pem"),
        "{e}"
    );
    let e = Identity::load(&p("ca.pem"), &p("a.pem"), &p("cut.key.pem")).unwrap_err();
    assert!(
        matches!(e, TlsError::Pem { .. }) && e.to_string().contains("cut.key.pem"),
        "{e}"
    );
    assert!(matches!(
        dev_pki(&names(&["a b"]), &[]),
        Err(TlsError::BadName(_))
    ));
}

#[test]
fn peer_id_needs_a_dns_name() {
    let key = KeyPair::generate().unwrap();
    let ip_only = CertificateParams::new(vec!["10.0.0.1".to_owned()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    assert!(matches!(
        peer_id_of(ip_only.der()),
        Err(TlsError::NoPeerId { .. })
    ));
    assert_eq!(
        ip_sans_of(ip_only.der()),
        vec!["10.0.0.1".parse::<IpAddr>().unwrap()]
    );
    let junk = CertificateDer::from(vec![0x30, 0x03, 1, 2, 3]);
    assert!(matches!(
        peer_id_of(&junk),
        Err(TlsError::BadCertificate { .. })
    ));
    assert!(ip_sans_of(&junk).is_empty());
}

#[test]
fn mutual_tls_handshake_in_memory() {
    let pki = dev_pki(&names(&["agent-1", "agent-2.zone_a"]), &[]).unwrap();
    let (a, b) = (pki.identity(0).unwrap(), pki.identity(1).unwrap());
    let (c, s) = handshake(
        a.client_config(ALPN).unwrap(),
        b.server_config(ALPN).unwrap(),
        "agent-2.zone_a",
    )
    .unwrap();
    assert_eq!(c.alpn_protocol(), Some(&b"shoal/1"[..]));
    let client_cert = &s.peer_certificates().unwrap()[0];
    assert_eq!(peer_id_of(client_cert).unwrap(), a.peer_id());
    // The server's name must match the name dialled.
    let e = handshake(
        a.client_config(ALPN).unwrap(),
        b.server_config(ALPN).unwrap(),
        "agent-3",
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            Refused::Client(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. }
            ))
        ),
        "{e:?}"
    );
}

#[test]
fn client_cert_from_another_ca_is_refused() {
    let fleet = dev_pki(&names(&["server"]), &[]).unwrap();
    let rogue = dev_pki(&names(&["rogue"]), &[]).unwrap();
    // The rogue trusts the fleet CA (so it accepts the server), but its own
    // certificate is from another CA with the same name (so webpki gets as far
    // as checking the signature).
    let bundle = format!("{}{}", fleet.ca_pem, rogue.ca_pem);
    let r = &rogue.certs[0];
    let rogue_id = Identity::from_pem(&bundle, &r.cert_pem, &r.key_pem).unwrap();
    let server = fleet.identity(0).unwrap().server_config(ALPN).unwrap();
    let e = handshake(rogue_id.client_config(ALPN).unwrap(), server, "server")
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(e, Refused::Server(rustls::Error::InvalidCertificate(_))),
        "{e:?}"
    );
}

#[test]
fn server_cert_from_another_ca_is_refused() {
    let fleet = dev_pki(&names(&["client"]), &[]).unwrap();
    let rogue = dev_pki(&names(&["server"]), &[]).unwrap();
    let e = handshake(
        fleet.identity(0).unwrap().client_config(ALPN).unwrap(),
        rogue.identity(0).unwrap().server_config(ALPN).unwrap(),
        "server",
    )
    .map(|_| ())
    .unwrap_err();
    assert!(
        matches!(e, Refused::Client(rustls::Error::InvalidCertificate(_))),
        "{e:?}"
    );
}

#[test]
fn missing_client_cert_is_refused() {
    let pki = dev_pki(&names(&["server"]), &[]).unwrap();
    let mut roots = RootCertStore::empty();
    roots.add(pki.ca_der.clone()).unwrap();
    let anonymous =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let server = pki.identity(0).unwrap().server_config(ALPN).unwrap();
    let e = handshake(anonymous, server, "server")
        .map(|_| ())
        .unwrap_err();
    assert!(
        matches!(e, Refused::Server(rustls::Error::NoCertificatesPresented)),
        "{e:?}"
    );
}
