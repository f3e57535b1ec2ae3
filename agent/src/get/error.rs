//! Why `shoal-agent get` (and `status`) failed, and the exit code each kind gets.
//! The codes are a contract (docs/operations.md, "shoal-agent get"):
//!
//! | code | kind |
//! | --- | --- |
//! | 2 | usage: a bad URL, digest or flag |
//! | 3 | the agent is down or unreachable (nothing was sent to the origin) |
//! | 4 | the origin (or the agent, for the request) answered 4xx |
//! | 5 | the origin or the agent answered 5xx, or something the tool cannot use |
//! | 6 | digest mismatch: the download is deleted |
//! | 7 | a local disk error (the output file or its `.part`) |
//! | 8 | the transfer broke off midway: the `.part` file is kept; run again to resume |
//! | 1 | anything else (the one-shot agent did not start, the runtime) |

use std::path::PathBuf;

use http::StatusCode;

/// One failure of a `get`, `--prefetch` or `status` run. Each says who failed.
#[derive(Debug, thiserror::Error)]
pub enum GetError {
    /// The caller's fault: a bad argument.
    #[error("{0}")]
    Usage(String),
    /// The agent could not be reached (connection refused, reset before answering).
    #[error("agent {agent} unreachable: {reason}")]
    AgentDown { agent: String, reason: String },
    /// A 4xx answer: the URL does not exist, is forbidden, or the request was refused.
    #[error("{url}: {status} {message}")]
    Client {
        url: String,
        status: StatusCode,
        message: String,
    },
    /// A 5xx answer (origin unreachable or failing, or the agent failed), or an answer
    /// the tool cannot use (an unexpected status, a bad `Content-Range`).
    #[error("{url}: {status} {message}")]
    Server {
        url: String,
        status: StatusCode,
        message: String,
    },
    /// The bytes do not have the digest asked for. Nothing is kept.
    #[error(
        "digest mismatch for {url}: expected {expected}, got {actual}; the download was deleted"
    )]
    Digest {
        url: String,
        expected: String,
        actual: String,
    },
    /// Reading or writing a local file failed: our side.
    #[error("{}: {source}", path.display())]
    Disk {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The response body broke off; the partial file is kept for a resume.
    #[error("transfer of {url} broke off after {got} bytes: {reason} (run again to resume)")]
    Interrupted {
        url: String,
        got: u64,
        reason: String,
    },
    /// The one-shot agent of `--standalone` did not start.
    #[error("standalone agent: {0}")]
    Standalone(String),
}

impl GetError {
    /// The process exit code for this failure (table in the module docs).
    pub fn exit_code(&self) -> u8 {
        match self {
            GetError::Usage(_) => 2,
            GetError::AgentDown { .. } => 3,
            GetError::Client { .. } => 4,
            GetError::Server { .. } => 5,
            GetError::Digest { .. } => 6,
            GetError::Disk { .. } => 7,
            GetError::Interrupted { .. } => 8,
            GetError::Standalone(_) => 1,
        }
    }

    /// The error for an answer with a status the tool does not accept.
    pub(crate) fn status(url: &str, status: StatusCode, message: String) -> Self {
        let (url, message) = (url.to_owned(), message);
        if status.is_client_error() {
            GetError::Client {
                url,
                status,
                message,
            }
        } else {
            GetError::Server {
                url,
                status,
                message,
            }
        }
    }

    pub(crate) fn disk(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        GetError::Disk {
            path: path.into(),
            source,
        }
    }
}
