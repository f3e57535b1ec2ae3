//! Tuning knobs of the fetch scheduler.

use std::time::Duration;

/// Shortest duration the scheduler uses for any timer; zero durations in a
/// [`SchedConfig`] are raised to this so that a timer never fires at the instant it is
/// armed (which would make the caller's event loop spin).
pub(super) const MIN_TIMER: Duration = Duration::from_millis(1);

/// Back-offs double per consecutive Busy/failure up to this many doublings (8×).
const MAX_DOUBLINGS: u32 = 3;

/// Tuning of one [`Scheduler`](super::Scheduler). Every field has a sensible default;
/// caps of 0 are raised to 1 (except `max_duplicates`, where 0 turns duplication off),
/// `peer_window_start` is capped at `peer_inflight`, and zero durations become 1 ms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchedConfig {
    /// Requests this download keeps in flight to one peer. Default 4. Raise it for peers
    /// behind long, fat links (more requests hide the round trip); the uploader's own
    /// limit answers `Busy` when we ask too much.
    pub peer_inflight: usize,
    /// Requests a newly seen peer may have in flight at first. Default 1. Each success
    /// allows one more (up to `peer_inflight`), `Busy` halves it, a failure resets it to
    /// 1: in a flash crowd everyone asks the few first holders, and four requests each
    /// would mostly buy four `Busy` answers.
    pub peer_window_start: usize,
    /// Requests in flight in total, peers and origin, duplicates included. Default 32.
    /// Bounds the memory of chunks being received (`max_inflight × chunk_size`).
    pub max_inflight: usize,
    /// Origin range requests in flight (leased or fallback). Default 4. The origin is
    /// the scarce resource; raising this mostly helps a lone agent with no swarm.
    pub origin_inflight: usize,
    /// Fixed part of a peer request's deadline. Default 2 s. Past the deadline the
    /// request is *slow*: the chunk may be duplicated to another holder.
    pub slow_base: Duration,
    /// Slowest acceptable peer transfer rate in bytes per second; the deadline is
    /// `slow_base + chunk_len / slow_rate`. Default 256 KiB/s, so a 1 MiB chunk gets
    /// 6 s: a peer on a 20 Mbit/s uplink serving 8 chunks at once sends each at about
    /// 300 KB/s and is not slow, only busy. 0 makes the deadline just `slow_base`.
    pub slow_rate: u64,
    /// A peer request still unanswered after this many deadlines is cancelled and
    /// counted as a failure of that peer. Default 3 (18 s for a 1 MiB chunk).
    pub give_up_after: u32,
    /// An origin request unanswered for this long is cancelled and retried. Default 60 s.
    /// The agent's HTTP client should time out first; this is the backstop.
    pub origin_timeout: Duration,
    /// Back-off of a peer after `Busy`. Doubles per consecutive `Busy`, up to 8×.
    /// Default 250 ms: a busy peer frees an upload slot within about one chunk time, and
    /// in a flash crowd most peers are busy most of the time.
    pub busy_backoff: Duration,
    /// Back-off of a peer after a failure, and of a chunk after a failed origin fetch.
    /// Doubles per consecutive failure, up to 8×. Default 1 s.
    pub failure_backoff: Duration,
    /// Consecutive failures (`Failed` or a given-up request) after which a peer is
    /// dropped for the rest of this object. Default 3. A success resets the count.
    pub max_failures: u32,
    /// How long a chunk may have neither a usable holder (known id and at least one
    /// live, unbanned peer holding it) nor a lease before it is fetched from the origin
    /// anyway. Default 10 s.
    pub origin_fallback_after: Duration,
    /// Failed origin attempts on a leased chunk before the lease is released back to the
    /// tracker ([`Action::ReleaseLeases`](super::Action::ReleaseLeases)). Default 3.
    pub lease_attempts: u32,
    /// Least time between two [`Action::WantLeases`](super::Action::WantLeases), except
    /// that storing a leased chunk allows the next ask at once. Default 2 s.
    pub lease_ask_interval: Duration,
    /// Most chunk indices listed in one `WantLeases`. Default 64.
    pub lease_ask_max: usize,
    /// Most requests in flight for one chunk (endgame and slow-request duplicates).
    /// Default 2. 1 means never duplicate.
    pub max_copies: usize,
    /// Most duplicate requests (beyond the first per chunk) in flight at once across the
    /// download. Default 8. Duplicates spend other peers' upload; keep this small.
    pub max_duplicates: usize,
    /// Most peer requests in flight while a leased chunk is being fetched from the
    /// origin. Nobody else can send that chunk, and the origin fetch shares our
    /// downlink with every peer transfer, so a full window of peer requests would
    /// starve it and, with it, the swarm. Default 4.
    pub peer_inflight_while_leased: usize,
    /// Breaks ties between equally near, equally loaded peers. Agents with the same view
    /// of the swarm would otherwise all pick the same peer and mostly hear `Busy`; set it
    /// from something unique to the agent (e.g. a hash of its own peer id). Default 0.
    pub salt: u64,
}

impl Default for SchedConfig {
    fn default() -> Self {
        Self {
            peer_inflight: 4,
            peer_window_start: 1,
            max_inflight: 32,
            origin_inflight: 4,
            slow_base: Duration::from_secs(2),
            slow_rate: 256 * 1024,
            give_up_after: 3,
            origin_timeout: Duration::from_secs(60),
            busy_backoff: Duration::from_millis(250),
            failure_backoff: Duration::from_secs(1),
            max_failures: 3,
            origin_fallback_after: Duration::from_secs(10),
            lease_attempts: 3,
            lease_ask_interval: Duration::from_secs(2),
            lease_ask_max: 64,
            max_copies: 2,
            max_duplicates: 8,
            peer_inflight_while_leased: 4,
            salt: 0,
        }
    }
}

impl SchedConfig {
    /// The same settings with caps and durations raised to their minimums.
    pub(super) fn normalized(mut self) -> Self {
        for cap in [
            &mut self.peer_inflight,
            &mut self.peer_window_start,
            &mut self.max_inflight,
            &mut self.origin_inflight,
            &mut self.lease_ask_max,
            &mut self.max_copies,
            &mut self.peer_inflight_while_leased,
        ] {
            *cap = (*cap).max(1);
        }
        for d in [
            &mut self.slow_base,
            &mut self.origin_timeout,
            &mut self.busy_backoff,
            &mut self.failure_backoff,
            &mut self.origin_fallback_after,
            &mut self.lease_ask_interval,
        ] {
            *d = (*d).max(MIN_TIMER);
        }
        self.peer_window_start = self.peer_window_start.min(self.peer_inflight);
        self.give_up_after = self.give_up_after.max(1);
        self.max_failures = self.max_failures.max(1);
        self.lease_attempts = self.lease_attempts.max(1);
        self
    }

    /// Deadline after which a peer request for a chunk of `len` bytes is slow.
    pub(super) fn slow_after(&self, len: u32) -> Duration {
        let per_byte = match self.slow_rate {
            0 => Duration::ZERO,
            // len < 2^32 and 10^9 < 2^30, so the product fits in u64.
            rate => Duration::from_nanos(u64::from(len) * 1_000_000_000 / rate),
        };
        self.slow_base.saturating_add(per_byte)
    }

    /// `base` doubled per consecutive Busy or failure after the first (`streak` ≥ 1),
    /// at most 8×.
    pub(super) fn backoff(base: Duration, streak: u32) -> Duration {
        let doublings = streak.saturating_sub(1).min(MAX_DOUBLINGS);
        base.saturating_mul(1 << doublings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadlines_scale_with_chunk_length() {
        let c = SchedConfig::default();
        assert_eq!(c.slow_after(1024 * 1024), Duration::from_secs(6));
        assert_eq!(c.slow_after(256 * 1024), Duration::from_secs(3));
        let fixed = SchedConfig {
            slow_rate: 0,
            ..SchedConfig::default()
        };
        assert_eq!(fixed.slow_after(u32::MAX), Duration::from_secs(2));
    }

    #[test]
    fn backoff_doubles_then_caps() {
        let base = SchedConfig::default().failure_backoff;
        let b: Vec<u64> = (1..=6)
            .map(|k| SchedConfig::backoff(base, k).as_secs())
            .collect();
        assert_eq!(b, [1, 2, 4, 8, 8, 8]);
    }

    #[test]
    fn zeros_are_raised() {
        let c = SchedConfig {
            peer_inflight: 0,
            max_copies: 0,
            max_duplicates: 0,
            busy_backoff: Duration::ZERO,
            ..SchedConfig::default()
        }
        .normalized();
        assert_eq!(c.peer_inflight, 1);
        assert_eq!(c.max_copies, 1);
        assert_eq!(c.max_duplicates, 0);
        assert_eq!(c.busy_backoff, MIN_TIMER);
    }
}
