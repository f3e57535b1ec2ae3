//! Why a request went to the origin: one [`FetchReason`] per origin request, chosen
//! when it is sent, exported as the `reason` label of `shoal_origin_fetches_total` and
//! `shoal_origin_bytes_total` and in the `X-Shoal-Origin-Reason` response header.
//!
//! The reason is the one known before the request leaves: a plain GET whose answer
//! turns out uncacheable or too large keeps the reason it was sent for (`cache_mode`,
//! say). Swarm chunk fetches take theirs from the scheduler ([`OriginReason`]).
//!
//! Cannot: tell why a *peer* had no copy (evicted there, never fetched); the
//! tracker does not say.

use shoal_proto::sched::OriginReason;

/// See the module docs; the list with explanations is in docs/operations.md ("Why
/// did this come from the origin?").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FetchReason {
    /// A swarm chunk under an origin lease from the tracker (a cold object: nobody
    /// has it yet, and this agent was picked to fetch it for the others).
    ColdLease,
    /// A swarm chunk with no holder and no lease for `peer.origin_fallback`.
    NoPeer,
    /// A swarm chunk whose peer requests failed, leaving no holder.
    PeerFailed,
    /// A swarm chunk whose peer request was given up as too slow.
    PeerTimeout,
    /// Bytes fetched again after a copy failed BLAKE3 verification: a peer's (swarm
    /// chunk) or the disk's (repair; also an unreadable or vanished chunk file).
    VerifyFailed,
    /// Repair of a chunk of a cached object that is no longer on disk (evicted).
    Evicted,
    /// A swarm chunk while the tracker cannot be reached.
    TrackerDown,
    /// A swarm chunk of an object the tracker knows with another chunk layout: this
    /// agent downloads it alone.
    LayoutMismatch,
    /// A URL whose rule says `pass`.
    RulePass,
    /// A request with `Authorization`, `Cookie` or `Cache-Control: no-store`.
    Private,
    /// A client `HEAD` with no fresh cached copy or fill to answer from.
    HeadMiss,
    /// A conditional request for a stale cached copy (or a client's `no-cache`).
    Revalidate,
    /// The swarm's `HEAD` learning the version of an uncached object (no body).
    SwarmHead,
    /// A `p2p` URL the swarm cannot share (no `Accept-Ranges: bytes`, no length or
    /// validator, `no-store`, an error status): one plain GET.
    NotSwarmable,
    /// A `p2p` object larger than the cache quota: streamed through uncached.
    TooLarge,
    /// A plain GET of an uncached URL not shared through the swarm (its mode is
    /// `cache`, or no tracker is configured).
    CacheMode,
    /// Another client's answer for this URL was not cacheable: this client's own
    /// request, relayed.
    Uncacheable,
    /// A registry mirror's `HEAD` asking the registry whether it accepts a client's
    /// credentials for a repository, or what digest a tag names (no body).
    RegistryAuth,
    /// A registry request relayed uncached: the `/v2/` ping, tag lists, referrers,
    /// client `HEAD`s, and every answer of a registry that refused the client.
    RegistryPass,
    /// A client's range far past what a fill in progress has: served from a `Range`
    /// request of its own (guarded by `If-Range`), not stored (`object/ahead.rs`).
    RangeAhead,
    /// A chunk of an origin fill that was skipped for caching while its client was
    /// served (the disk was behind), fetched again by `Range` after the fill so the
    /// object is cached (`object/behind.rs`).
    Skipped,
}

impl FetchReason {
    /// Every reason, in label order of the docs (for pre-registering label values).
    pub const ALL: [FetchReason; 21] = [
        FetchReason::ColdLease,
        FetchReason::NoPeer,
        FetchReason::PeerFailed,
        FetchReason::PeerTimeout,
        FetchReason::VerifyFailed,
        FetchReason::Evicted,
        FetchReason::TrackerDown,
        FetchReason::LayoutMismatch,
        FetchReason::RulePass,
        FetchReason::Private,
        FetchReason::HeadMiss,
        FetchReason::Revalidate,
        FetchReason::SwarmHead,
        FetchReason::NotSwarmable,
        FetchReason::TooLarge,
        FetchReason::CacheMode,
        FetchReason::Uncacheable,
        FetchReason::RegistryAuth,
        FetchReason::RegistryPass,
        FetchReason::RangeAhead,
        FetchReason::Skipped,
    ];

    /// The metric label and header value.
    pub fn label(self) -> &'static str {
        match self {
            FetchReason::ColdLease => "cold_lease",
            FetchReason::NoPeer => "no_peer",
            FetchReason::PeerFailed => "peer_failed",
            FetchReason::PeerTimeout => "peer_timeout",
            FetchReason::VerifyFailed => "verify_failed",
            FetchReason::Evicted => "evicted",
            FetchReason::TrackerDown => "tracker_down",
            FetchReason::LayoutMismatch => "layout_mismatch",
            FetchReason::RulePass => "rule_pass",
            FetchReason::Private => "private",
            FetchReason::HeadMiss => "head_miss",
            FetchReason::Revalidate => "revalidate",
            FetchReason::SwarmHead => "swarm_head",
            FetchReason::NotSwarmable => "not_swarmable",
            FetchReason::TooLarge => "too_large",
            FetchReason::CacheMode => "cache_mode",
            FetchReason::Uncacheable => "uncacheable",
            FetchReason::RegistryAuth => "registry_auth",
            FetchReason::RegistryPass => "registry_pass",
            FetchReason::RangeAhead => "range_ahead",
            FetchReason::Skipped => "skipped",
        }
    }

    /// The reason of a swarm chunk fetch the scheduler asked for. `solo`: the
    /// download runs without the swarm because the layouts differ (the scheduler
    /// was told the tracker is lost).
    pub fn of_chunk(r: OriginReason, solo: bool) -> Self {
        match r {
            OriginReason::Lease => FetchReason::ColdLease,
            OriginReason::TrackerLost if solo => FetchReason::LayoutMismatch,
            OriginReason::TrackerLost => FetchReason::TrackerDown,
            OriginReason::NoPeer => FetchReason::NoPeer,
            OriginReason::PeerFailed => FetchReason::PeerFailed,
            OriginReason::PeerTimeout => FetchReason::PeerTimeout,
            OriginReason::PeerCorrupt => FetchReason::VerifyFailed,
        }
    }

    /// The reason of a plain GET for `fallback` (why the plain path was taken):
    /// a conditional GET for a cached copy is a revalidation whatever led to it.
    pub fn of_get(has_cached: bool, fallback: FetchReason) -> Self {
        if has_cached {
            FetchReason::Revalidate
        } else {
            fallback
        }
    }
}

impl std::fmt::Display for FetchReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.label())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_reasons_map_one_to_one() {
        use OriginReason as O;
        let cases = [
            (O::Lease, false, "cold_lease"),
            (O::NoPeer, false, "no_peer"),
            (O::PeerFailed, false, "peer_failed"),
            (O::PeerTimeout, false, "peer_timeout"),
            (O::PeerCorrupt, false, "verify_failed"),
            (O::TrackerLost, false, "tracker_down"),
            (O::TrackerLost, true, "layout_mismatch"),
            (O::Lease, true, "cold_lease"),
        ];
        for (r, solo, want) in cases {
            assert_eq!(
                FetchReason::of_chunk(r, solo).label(),
                want,
                "{r:?} solo={solo}"
            );
        }
    }

    #[test]
    fn revalidation_wins_for_plain_gets() {
        assert_eq!(
            FetchReason::of_get(true, FetchReason::NotSwarmable),
            FetchReason::Revalidate
        );
        assert_eq!(
            FetchReason::of_get(false, FetchReason::NotSwarmable),
            FetchReason::NotSwarmable
        );
    }

    #[test]
    fn labels_are_unique_snake_case() {
        let labels: std::collections::HashSet<_> =
            FetchReason::ALL.iter().map(|r| r.label()).collect();
        assert_eq!(labels.len(), FetchReason::ALL.len());
        for l in labels {
            assert!(l.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{l}");
        }
    }
}
