//! `shoal-agent get`: a download tool for the node's agent. It sends one GET through
//! the agent's proxy (URL in absolute form) and writes the body to `FILE.part`,
//! renamed to `FILE` once complete and, with `--digest`, verified; a later run
//! resumes a `.part` with `Range` + `If-Range` ([`partial`]). `--standalone` runs a
//! one-shot agent in the process instead ([`standalone`]); `--prefetch` asks the
//! admin listener to fill the cache and writes nothing ([`prefetch`]). `status`
//! summarises a node from its admin API ([`status`]).
//!
//! What it cannot do: follow redirects (the agent relays them; `get` reports them as
//! an error), send credentials, download more than one URL per run, or resume
//! without a validator (an answer with neither a strong `ETag` nor `Last-Modified`
//! restarts from zero). The digest of a resumed download is computed over the bytes
//! in the `.part` file too, so a corrupted part is caught as a mismatch.

pub mod cli;
pub mod client;
pub mod digest;
mod error;
pub mod partial;
pub mod prefetch;
pub mod progress;
pub mod standalone;
pub mod status;

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use client::Endpoint;
pub use digest::Expected;
pub use error::GetError;
use partial::Meta;
use progress::Progress;

/// Longest wait for the next piece of the body before the transfer counts as broken.
const STALL: Duration = Duration::from_secs(60);

/// One download.
#[derive(Debug, Clone)]
pub struct Options {
    /// Absolute `http://` or `https://` URL, or a mirror path (`/m/NAME/...`).
    pub url: Uri,
    /// Where the file goes (`FILE.part` and `FILE.part.meta` beside it meanwhile).
    pub out: PathBuf,
    /// The agent's proxy listener.
    pub agent: Endpoint,
    pub digest: Option<Expected>,
    pub progress: progress::Mode,
}

/// What a successful download did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// Length of the written file.
    pub bytes: u64,
    /// Bytes already in the `.part` file (0 without a resume).
    pub resumed_from: u64,
    /// The agent's `X-Shoal-Cache` answer (`hit`, `miss`, ...), if any.
    pub cache: Option<String>,
}

/// Parses the URL argument: absolute `http` or `https`, or a path on one of the
/// agent's mirrors (`/m/NAME/...`, e.g. a registry blob
/// `/m/dockerhub/v2/library/alpine/blobs/sha256:<hex>`), which is asked of the agent
/// as is.
pub fn parse_url(s: &str) -> Result<Uri, GetError> {
    let u: Uri = s
        .parse()
        .map_err(|_| GetError::Usage(format!("{s:?} is not a URL")))?;
    match (u.scheme_str(), u.host()) {
        (Some("http" | "https"), Some(_)) => Ok(u),
        (None, None) if is_mirror_path(u.path()) => Ok(u),
        _ => Err(GetError::Usage(format!(
            "{s:?}: want an absolute http:// or https:// URL, or a mirror path /m/NAME/..."
        ))),
    }
}

/// `/m/NAME/rest` with a non-empty name and rest.
fn is_mirror_path(path: &str) -> bool {
    path.strip_prefix("/m/")
        .and_then(|r| r.split_once('/'))
        .is_some_and(|(name, rest)| !name.is_empty() && !rest.is_empty())
}

/// The file name `get` writes to without `-o`: the URL's last path segment, or
/// `index.html`.
pub fn default_out(url: &Uri) -> PathBuf {
    let name = url
        .path()
        .rsplit('/')
        .find(|s| !s.is_empty() && *s != "." && *s != "..")
        .unwrap_or("index.html");
    PathBuf::from(name)
}

/// Downloads `o.url` through `o.agent` into `o.out`; see the module docs.
pub async fn download(o: &Options) -> Result<Report, GetError> {
    let url = o.url.to_string();
    let mut resume = partial::resumable(&o.out, &url).await;
    if resume.is_none() {
        partial::discard(&o.out).await;
    }
    loop {
        let resp = o.agent.send(request(&o.url, resume.as_ref())?).await?;
        let status = resp.status();
        let offset = match (status, &resume) {
            (StatusCode::OK, _) => 0,
            (StatusCode::PARTIAL_CONTENT, Some((len, _))) => {
                match content_range_start(resp.headers()) {
                    Some(start) if start == *len => *len,
                    _ => {
                        return Err(GetError::Server {
                            url,
                            status,
                            message: "Content-Range does not start where the .part ends".into(),
                        });
                    }
                }
            }
            (StatusCode::RANGE_NOT_SATISFIABLE, Some(_)) => {
                // The part is not a prefix of the current version: start over.
                partial::discard(&o.out).await;
                resume = None;
                continue;
            }
            (s, _) => return Err(GetError::status(&url, s, client::error_message(resp).await)),
        };
        let total = if offset > 0 {
            content_range_total(resp.headers())
        } else {
            content_length(resp.headers())
        };
        let cache = resp
            .headers()
            .get("x-shoal-cache")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let meta = validator(resp.headers()).map(|validator| Meta {
            url: url.clone(),
            validator,
            total,
        });
        let bytes = write(o, resp.into_body(), offset, total, meta).await?;
        return Ok(Report {
            bytes,
            resumed_from: offset,
            cache,
        });
    }
}

/// The GET to send, with `Range`/`If-Range` when resuming.
fn request(url: &Uri, resume: Option<&(u64, Meta)>) -> Result<Request<Full<Bytes>>, GetError> {
    // A mirror path goes to the agent in origin form; its Host is the agent, which
    // routes by the `/m/NAME/` prefix.
    let host = url.authority().map_or("localhost", |a| a.as_str());
    let mut b = Request::get(url.clone()).header(header::HOST, host).header(
        header::USER_AGENT,
        concat!("shoal-agent-get/", env!("CARGO_PKG_VERSION")),
    );
    if let Some((len, meta)) = resume {
        b = b
            .header(header::RANGE, format!("bytes={len}-"))
            .header(header::IF_RANGE, meta.validator.as_str());
    }
    b.body(Full::new(Bytes::new()))
        .map_err(|e| GetError::Usage(format!("{url}: {e}")))
}

/// Streams `body` into the part file from `offset` on, then verifies and renames it.
/// Returns the file's length.
async fn write(
    o: &Options,
    mut body: hyper::body::Incoming,
    offset: u64,
    total: Option<u64>,
    meta: Option<Meta>,
) -> Result<u64, GetError> {
    let url = o.url.to_string();
    let part = partial::part_path(&o.out);
    let disk = |e| GetError::disk(&part, e);
    let mut hasher = o.digest.as_ref().map(Expected::hasher);
    let mut file = if offset == 0 {
        match &meta {
            Some(m) => partial::save(&o.out, m)
                .await
                .map_err(|e| GetError::disk(partial::meta_path(&o.out), e))?,
            None => {
                let _ = tokio::fs::remove_file(partial::meta_path(&o.out)).await;
            }
        }
        tokio::fs::File::create(&part).await.map_err(disk)?
    } else {
        if let Some(h) = hasher.as_mut() {
            hash_file(&part, offset, h).await?;
        }
        let f = tokio::fs::OpenOptions::new()
            .append(true)
            .open(&part)
            .await
            .map_err(disk)?;
        let len = f.metadata().await.map_err(disk)?.len();
        if len != offset {
            return Err(GetError::disk(
                &part,
                std::io::Error::other(format!(
                    "changed while resuming ({len} bytes, not {offset})"
                )),
            ));
        }
        f
    };
    let name = o
        .out
        .file_name()
        .map_or_else(|| url.clone(), |n| n.to_string_lossy().into_owned());
    let mut progress = Progress::start(o.progress, &name, total, offset);
    let mut got = offset;
    let broke = |got, reason: String| GetError::Interrupted {
        url: url.clone(),
        got,
        reason,
    };
    let res: Result<(), GetError> = async {
        loop {
            let frame = match tokio::time::timeout(STALL, body.frame()).await {
                Err(_) => return Err(broke(got, format!("nothing for {STALL:?}"))),
                Ok(None) => break,
                Ok(Some(Err(e))) => return Err(broke(got, e.to_string())),
                Ok(Some(Ok(f))) => f,
            };
            let Ok(data) = frame.into_data() else {
                continue;
            };
            file.write_all(&data).await.map_err(disk)?;
            if let Some(h) = hasher.as_mut() {
                h.update(&data);
            }
            got += data.len() as u64;
            progress.advance(data.len() as u64);
        }
        file.flush().await.map_err(disk)?;
        if let Some(t) = total.filter(|t| *t != got) {
            return Err(broke(got, format!("the answer ended before its {t} bytes")));
        }
        file.sync_all().await.map_err(disk)?;
        Ok(())
    }
    .await;
    // tokio's File writes in the background: wait for what was written before a
    // failure too, so the `.part` a resume starts from holds every byte counted.
    let _ = file.flush().await;
    drop(file);
    if let Err(e) = res {
        progress.abandon();
        return Err(e);
    }
    if let (Some(want), Some(h)) = (o.digest, hasher) {
        let actual = h.finish();
        if actual != want {
            progress.abandon();
            partial::discard(&o.out).await;
            return Err(GetError::Digest {
                url,
                expected: want.to_string(),
                actual: actual.to_string(),
            });
        }
    }
    tokio::fs::rename(&part, &o.out)
        .await
        .map_err(|e| GetError::disk(&o.out, e))?;
    let _ = tokio::fs::remove_file(partial::meta_path(&o.out)).await;
    progress.finish();
    Ok(got)
}

/// Feeds the first `len` bytes of `path` to `h`.
async fn hash_file(path: &Path, len: u64, h: &mut digest::Hasher) -> Result<(), GetError> {
    let disk = |e| GetError::disk(path, e);
    let f = tokio::fs::File::open(path).await.map_err(disk)?;
    let mut f = f.take(len);
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).await.map_err(disk)?;
        if n == 0 {
            return Ok(());
        }
        h.update(&buf[..n]);
    }
}

/// The strong `ETag`, else `Last-Modified`: what `If-Range` may carry (RFC 9110
/// §13.1.5 allows no weak tag).
fn validator(h: &HeaderMap) -> Option<String> {
    let text = |v: &HeaderValue| v.to_str().ok().map(str::to_owned);
    h.get(header::ETAG)
        .and_then(text)
        .filter(|e| e.starts_with('"'))
        .or_else(|| h.get(header::LAST_MODIFIED).and_then(text))
}

fn content_length(h: &HeaderMap) -> Option<u64> {
    h.get(header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

/// `bytes START-END/TOTAL` → (START, TOTAL if given).
fn content_range(h: &HeaderMap) -> Option<(u64, Option<u64>)> {
    let v = h.get(header::CONTENT_RANGE)?.to_str().ok()?;
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    Some((start.trim().parse().ok()?, total.trim().parse().ok()))
}

fn content_range_start(h: &HeaderMap) -> Option<u64> {
    content_range(h).map(|(s, _)| s)
}

fn content_range_total(h: &HeaderMap) -> Option<u64> {
    content_range(h).and_then(|(_, t)| t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_ranges() {
        let u = |s: &str| parse_url(s).unwrap();
        assert_eq!(default_out(&u("http://h/a/b.deb")), PathBuf::from("b.deb"));
        assert_eq!(default_out(&u("http://h/a/")), PathBuf::from("a"));
        assert_eq!(default_out(&u("http://h")), PathBuf::from("index.html"));
        assert!(matches!(parse_url("/x"), Err(GetError::Usage(_))));
        assert!(matches!(parse_url("/m/"), Err(GetError::Usage(_))));
        assert!(matches!(parse_url("/m/reg/"), Err(GetError::Usage(_))));
        let blob = u("/m/reg/v2/team/app/blobs/sha256:ab");
        assert_eq!(default_out(&blob), PathBuf::from("sha256:ab"));
        assert!(matches!(parse_url("ftp://h/x"), Err(GetError::Usage(_))));
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_RANGE, "bytes 10-19/20".parse().unwrap());
        assert_eq!(content_range(&h), Some((10, Some(20))));
        h.insert(header::CONTENT_RANGE, "bytes 10-19/*".parse().unwrap());
        assert_eq!(content_range(&h), Some((10, None)));
        h.insert(header::ETAG, "W/\"x\"".parse().unwrap());
        assert_eq!(validator(&h), None);
        h.insert(
            header::LAST_MODIFIED,
            "Tue, 14 Nov 2023 22:13:20 GMT".parse().unwrap(),
        );
        assert_eq!(
            validator(&h).as_deref(),
            Some("Tue, 14 Nov 2023 22:13:20 GMT")
        );
    }
}
