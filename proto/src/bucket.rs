//! A token bucket, the one rate limiter the agent and the tracker share. Pure: the
//! caller passes `now` (time going backwards is ignored), so it is tested with
//! simulated time.
//!
//! Two ways to spend: [`TokenBucket::try_take`] admits or refuses (the tracker's
//! per-agent request budget), [`TokenBucket::take`] always reserves and may go into
//! debt, returning how long the caller must wait (the agent's upload pacing: the bytes
//! are about to be sent anyway, the sender sleeps the debt off).

use std::time::{Duration, Instant};

/// `rate` tokens per second, at most `burst` saved up; starts full.
#[derive(Debug, Clone)]
pub struct TokenBucket {
    /// Tokens per second, > 0.
    rate: f64,
    burst: f64,
    /// Tokens available; negative = debt.
    level: f64,
    last: Instant,
}

impl TokenBucket {
    /// The slowest refill: one token per thousand seconds.
    pub const MIN_RATE: f64 = 1e-3;

    /// A full bucket. `rate` is clamped to at least [`TokenBucket::MIN_RATE`] and
    /// `burst` to at least one token, so every bucket refills and admits something.
    pub fn new(rate: f64, burst: f64, now: Instant) -> Self {
        let rate = if rate.is_finite() {
            rate.max(Self::MIN_RATE)
        } else {
            Self::MIN_RATE
        };
        let burst = if burst.is_finite() {
            burst.max(1.0)
        } else {
            1.0
        };
        Self {
            rate,
            burst,
            level: burst,
            last: now,
        }
    }

    /// Takes `n` tokens if all are there; otherwise takes none and returns false.
    pub fn try_take(&mut self, n: f64, now: Instant) -> bool {
        self.refill(now);
        if self.level >= n {
            self.level -= n;
            true
        } else {
            false
        }
    }

    /// Reserves `n` tokens, into debt if need be, and returns how long until the debt
    /// is paid off (zero if the bucket covered them).
    pub fn take(&mut self, n: f64, now: Instant) -> Duration {
        self.refill(now);
        self.level -= n;
        self.debt()
    }

    /// How long until the bucket is out of debt, reserving nothing.
    pub fn backlog(&mut self, now: Instant) -> Duration {
        self.refill(now);
        self.debt()
    }

    /// True when the bucket would be full at `now`: such a bucket is equivalent to a
    /// fresh one and may be dropped from a table.
    pub fn is_full(&self, now: Instant) -> bool {
        self.level + now.saturating_duration_since(self.last).as_secs_f64() * self.rate
            >= self.burst
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.level = (self.level + dt * self.rate).min(self.burst);
    }

    fn debt(&self) -> Duration {
        if self.level >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.level / self.rate)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Milliseconds, rounded (the bucket works in floating point).
    fn ms(d: Duration) -> u128 {
        (d.as_secs_f64() * 1000.0).round() as u128
    }

    #[test]
    fn take_goes_into_debt_and_paces() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1_000_000.0, 250_000.0, t0);
        assert_eq!(b.take(250_000.0, t0), Duration::ZERO);
        assert_eq!(ms(b.take(500_000.0, t0)), 500);
        assert_eq!(ms(b.backlog(t0 + Duration::from_millis(200))), 300);
        assert_eq!(ms(b.backlog(t0 + Duration::from_millis(500))), 0);
        // Refill is capped at the burst.
        let later = t0 + Duration::from_secs(100);
        assert_eq!(b.take(250_000.0, later), Duration::ZERO);
        assert!(b.take(1.0, later) > Duration::ZERO);
        // Time going backwards is ignored.
        assert!(b.backlog(t0) > Duration::ZERO);
    }

    #[test]
    fn try_take_admits_the_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(2.0, 3.0, t0);
        assert!((0..3).all(|_| b.try_take(1.0, t0)));
        assert!(!b.try_take(1.0, t0), "burst spent");
        assert!(!b.is_full(t0));
        let half = t0 + Duration::from_millis(500);
        assert!(b.try_take(1.0, half), "one token per half second");
        assert!(!b.try_take(1.0, half));
        assert!(b.is_full(t0 + Duration::from_secs(10)));
        // A refused take takes nothing.
        let mut c = TokenBucket::new(1.0, 1.0, t0);
        assert!(!c.try_take(2.0, t0));
        assert!(c.try_take(1.0, t0));
    }

    #[test]
    fn degenerate_parameters_still_refill() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(0.0, f64::NAN, t0);
        assert!(b.try_take(1.0, t0));
        assert!(!b.try_take(1.0, t0));
        assert!(!b.try_take(1.0, t0 + Duration::from_secs(999)));
        assert!(b.try_take(1.0, t0 + Duration::from_secs(1000)));
    }
}
