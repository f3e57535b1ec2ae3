//! A token server for the registry's `auth.token` mode (the Docker token
//! authentication flow that Docker Hub, ghcr.io and quay.io use): `GET REALM?scope=…
//! &service=…` with Basic credentials, or the OAuth2 `POST REALM` form containerd
//! tries first, answered with a JWT the registry verifies.
//!
//! The JWT is ES256, signed with a P-256 key generated here (rcgen), its self-signed
//! certificate in the `x5c` header; the registry trusts that certificate as its
//! `rootcertbundle` (distribution 2.8 verifies `x5c` chains against it, then checks
//! `iss`, `aud`, `exp`/`nbf` and the `access` claim for the repository and action).
//! Known users get the actions they ask for; anonymous clients get a token with no
//! access at all (as a registry does for a private repository); a wrong password
//! gets `401`. Not a general token service: one service, one issuer, no refresh
//! tokens.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};

use super::Server;

pub const SERVICE: &str = "shoal-test-registry";
pub const ISSUER: &str = "shoal-test-issuer";

/// A running token server.
#[derive(Debug)]
pub struct TokenServer {
    /// The `realm` the registry sends clients to.
    pub realm: String,
    /// The certificate the registry trusts (`rootcertbundle`).
    pub cert_pem: String,
    issued: Arc<Mutex<Vec<Issued>>>,
    _server: Server,
}

/// One token handed out: to whom (`None`: anonymous) and for which scopes granted.
#[derive(Debug, Clone)]
pub struct Issued {
    pub user: Option<String>,
    pub granted: Vec<String>,
}

struct Signer {
    key: EcdsaKeyPair,
    cert_der: Vec<u8>,
    rng: SystemRandom,
    users: HashMap<String, String>,
}

impl TokenServer {
    /// Starts on `ip`:0, knowing `users` (name, password).
    pub async fn start(ip: &str, users: &[(&str, &str)]) -> anyhow::Result<Self> {
        let key = rcgen::KeyPair::generate()?;
        let cert = rcgen::CertificateParams::new(vec!["shoal-test-token".to_owned()])?
            .self_signed(&key)?;
        let rng = SystemRandom::new();
        let signer = Arc::new(Signer {
            key: EcdsaKeyPair::from_pkcs8(
                &ECDSA_P256_SHA256_FIXED_SIGNING,
                &key.serialize_der(),
                &rng,
            )
            .map_err(|e| anyhow::anyhow!("token key: {e}"))?,
            cert_der: cert.der().to_vec(),
            rng,
            users: users
                .iter()
                .map(|(u, p)| ((*u).to_owned(), (*p).to_owned()))
                .collect(),
        });
        let issued = Arc::new(Mutex::new(Vec::new()));
        let log = issued.clone();
        let server = Server::start(ip, move |req| {
            let (signer, log) = (signer.clone(), log.clone());
            async move {
                let method = req.method().clone();
                let query = req.uri().query().unwrap_or("").to_owned();
                let basic = req
                    .headers()
                    .get(http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(basic_credentials);
                let body = req
                    .into_body()
                    .collect()
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let (params, creds) = if method == Method::POST {
                    let form = form(&String::from_utf8_lossy(&body));
                    let creds = match (form.get("username"), form.get("password")) {
                        (Some(u), Some(p)) => Some((u[0].clone(), p[0].clone())),
                        _ => None,
                    };
                    (form, creds)
                } else {
                    (form(&query), basic)
                };
                signer.answer(&params, creds, &log)
            }
        })
        .await?;
        Ok(TokenServer {
            realm: format!("http://{}/token", server.addr),
            cert_pem: cert.pem(),
            issued,
            _server: server,
        })
    }

    /// Every token handed out so far.
    pub fn issued(&self) -> Vec<Issued> {
        self.issued.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

impl Signer {
    fn answer(
        &self,
        params: &HashMap<String, Vec<String>>,
        creds: Option<(String, String)>,
        log: &Mutex<Vec<Issued>>,
    ) -> Response<Full<Bytes>> {
        let user = match creds {
            Some((u, p)) if self.users.get(&u) == Some(&p) => Some(u),
            Some(_) => return reply(StatusCode::UNAUTHORIZED, r#"{"details":"bad credentials"}"#),
            None => None,
        };
        let scopes = params.get("scope").cloned().unwrap_or_default();
        let mut access = Vec::new();
        let mut granted = Vec::new();
        for s in scopes.iter().flat_map(|s| s.split(' ')) {
            let mut parts = s.splitn(3, ':');
            let (Some(kind), Some(name), Some(actions)) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            if user.is_none() {
                continue;
            }
            let actions: Vec<&str> = actions
                .split(',')
                .filter(|a| matches!(*a, "pull" | "push"))
                .collect();
            granted.push(s.to_owned());
            access.push(serde_json::json!({ "type": kind, "name": name, "actions": actions }));
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let header = serde_json::json!({
            "typ": "JWT",
            "alg": "ES256",
            "x5c": [STANDARD.encode(&self.cert_der)],
        });
        let claims = serde_json::json!({
            "iss": ISSUER,
            "sub": user.clone().unwrap_or_default(),
            "aud": SERVICE,
            "exp": now + 300,
            "nbf": now.saturating_sub(10),
            "iat": now,
            "jti": format!("{now}-{}", granted.len()),
            "access": access,
        });
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let Ok(sig) = self.key.sign(&self.rng, signing_input.as_bytes()) else {
            return reply(StatusCode::INTERNAL_SERVER_ERROR, "signing failed");
        };
        let token = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()));
        if let Ok(mut l) = log.lock() {
            l.push(Issued { user, granted });
        }
        let body = serde_json::json!({
            "token": token,
            "access_token": token,
            "expires_in": 300,
        });
        reply(StatusCode::OK, &body.to_string())
    }
}

fn reply(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body.to_owned())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

/// `Basic base64(user:pass)` → (user, pass).
fn basic_credentials(v: &str) -> Option<(String, String)> {
    let b = STANDARD.decode(v.strip_prefix("Basic ")?).ok()?;
    let (u, p) = std::str::from_utf8(&b).ok()?.split_once(':')?;
    Some((u.to_owned(), p.to_owned()))
}

/// `a=1&b=2&a=3` (form or query, `+` and `%XX` decoded) → every value of each key.
fn form(s: &str) -> HashMap<String, Vec<String>> {
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for pair in s.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.entry(decode(k)).or_default().push(decode(v));
    }
    out
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding() {
        let f = form("scope=repository%3Ademo%2Fapp%3Apull&service=a+b&scope=x");
        assert_eq!(f["scope"], vec!["repository:demo/app:pull", "x"]);
        assert_eq!(f["service"], vec!["a b"]);
        assert_eq!(decode("%4"), "%4");
    }
}
