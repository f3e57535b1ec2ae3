//! `shoal-agent get --prefetch URL...`: asks the admin listener's `POST /v1/prefetch`
//! to put the URLs into the node's cache. Returns once the agent accepted them; the
//! fetches go on in the agent (watch `shoal_prefetch_total`).

use bytes::Bytes;
use http::header;
use http::{Request, StatusCode};
use http_body_util::Full;
use serde::{Deserialize, Serialize};

use super::{Endpoint, GetError, client};

/// The agent's answer: one entry per URL, in order.
#[derive(Debug, Clone, Deserialize)]
pub struct Answer {
    pub accepted: usize,
    pub urls: Vec<Entry>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Entry {
    pub url: String,
    pub accepted: bool,
    #[serde(default)]
    pub reason: Option<String>,
}

#[derive(Serialize)]
struct Ask<'a> {
    urls: &'a [String],
}

/// Sends `urls` to the admin listener `admin`. An answer other than `202` is an error
/// (4xx: the request was refused, e.g. too many URLs).
pub async fn prefetch(admin: &Endpoint, urls: &[String]) -> Result<Answer, GetError> {
    let url = admin.url("/v1/prefetch");
    let body = serde_json::to_vec(&Ask { urls }).map_err(|e| GetError::Usage(e.to_string()))?;
    let req = Request::post(&url)
        .header(header::HOST, admin.authority())
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| GetError::Usage(e.to_string()))?;
    let resp = admin.send(req).await?;
    let status = resp.status();
    if status != StatusCode::ACCEPTED {
        return Err(GetError::status(
            &url,
            status,
            client::error_message(resp).await,
        ));
    }
    let body = client::read_all(resp, 4 << 20)
        .await
        .map_err(|e| GetError::Server {
            url: url.clone(),
            status,
            message: e,
        })?;
    serde_json::from_slice(&body).map_err(|e| GetError::Server {
        url,
        status,
        message: format!("unreadable answer: {e}"),
    })
}
