//! Why a fill, or the re-fetch of one chunk, failed, and who is at fault.
//!
//! A fill's error is shared by every reader of the fill (each ends its response with
//! it, as a reset), so it is `Clone`. The variants say who failed; [`FillError::blame`]
//! sums that up for logs and decisions.

use shoal_proto::Sha256Digest;
use std::sync::Arc;

use super::version::Changed;
use crate::metrics::Source;
use crate::origin::OriginError;

/// Who is at fault for a [`FillError`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    /// The origin: unreachable, too slow, broke a body, or changed the object.
    Origin,
    /// A peer (or the publisher of the ids peers' bytes matched).
    Peer,
    /// This agent: its disk, its metadata or a bug.
    Local,
}

/// See the module docs.
#[derive(Debug, Clone, thiserror::Error)]
pub enum FillError {
    /// The origin no longer serves the version being filled (flow 7 of the design).
    /// Nothing of the fill is kept; the next request starts a new version.
    #[error("the origin no longer serves this version: {why}")]
    OriginChanged { why: Changed },
    /// The origin failed (connection, timeout, a short body, a `5xx`).
    #[error(transparent)]
    Origin(Arc<OriginError>),
    /// The assembled object does not hash to the digest its URL names. `from` is the
    /// origin when every chunk came from it, else a peer.
    #[error("{} bytes hash to {got}, the URL names {want}", from.label())]
    DigestMismatch {
        from: Source,
        got: Sha256Digest,
        want: Sha256Digest,
    },
    /// The origin's bytes of chunk `index`, answered under the version's validators and
    /// exactly the range asked for, do not match the id the manifest or the swarm has:
    /// the origin changed its bytes but not its validators (or, which this agent cannot
    /// tell apart, the id's first publisher lied).
    #[error("origin bytes of chunk {index} do not match the known id")]
    IdMismatch { index: usize },
    /// Our cache is inconsistent: a chunk vanished, a manifest does not fit its layout.
    #[error("local store: {0}")]
    Store(String),
    /// A bug or a local input the agent built itself (URL, header) is unusable.
    #[error("internal: {0}")]
    Internal(String),
}

impl FillError {
    pub fn blame(&self) -> Blame {
        match self {
            FillError::OriginChanged { .. } | FillError::IdMismatch { .. } => Blame::Origin,
            FillError::Origin(e) => match **e {
                OriginError::Denied(_) | OriginError::BadUrl(..) | OriginError::Internal(_) => {
                    Blame::Local
                }
                OriginError::Upstream { .. } | OriginError::Timeout { .. } => Blame::Origin,
            },
            FillError::DigestMismatch { from, .. } => match from {
                Source::Origin => Blame::Origin,
                Source::Peer => Blame::Peer,
                Source::Cache => Blame::Local,
            },
            FillError::Store(_) | FillError::Internal(_) => Blame::Local,
        }
    }

    pub fn is_origin_changed(&self) -> bool {
        matches!(self, FillError::OriginChanged { .. })
    }
}

impl From<OriginError> for FillError {
    fn from(e: OriginError) -> Self {
        FillError::Origin(Arc::new(e))
    }
}

impl From<Changed> for FillError {
    fn from(why: Changed) -> Self {
        FillError::OriginChanged { why }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blame_names_who_failed() {
        let changed = FillError::from(Changed::Status(http::StatusCode::OK));
        assert_eq!(changed.blame(), Blame::Origin);
        assert!(changed.is_origin_changed());
        let timeout = FillError::from(OriginError::Timeout {
            host: "o".into(),
            after: std::time::Duration::from_secs(1),
        });
        assert_eq!(timeout.blame(), Blame::Origin);
        assert!(!timeout.is_origin_changed());
        let digest = |from| FillError::DigestMismatch {
            from,
            got: Sha256Digest::from_sha256([1; 32]),
            want: Sha256Digest::from_sha256([2; 32]),
        };
        assert_eq!(digest(Source::Peer).blame(), Blame::Peer);
        assert_eq!(digest(Source::Origin).blame(), Blame::Origin);
        assert_eq!(
            FillError::Internal("bad range".into()).blame(),
            Blame::Local
        );
        assert!(!FillError::Internal("bad range".into()).is_origin_changed());
        assert_eq!(FillError::Store("gone".into()).blame(), Blame::Local);
        // A panicked task is ours (review (d)2): 500 and local, not 502 and origin.
        let panicked = OriginError::Internal("task panicked".into());
        assert_eq!(panicked.status(), http::StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(FillError::from(panicked).blame(), Blame::Local);
    }
}
