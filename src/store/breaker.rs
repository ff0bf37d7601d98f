//! A circuit breaker for remote stores: after a run of failures, stop calling the server for
//! a while instead of adding a timeout to every request; then let one call through to probe.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

#[derive(Debug)]
pub(crate) struct Breaker {
    threshold: u32,
    cooldown: Duration,
    epoch: Instant,
    consecutive_failures: AtomicU32,
    /// Nanoseconds since `epoch` until which calls are refused; 0 when closed.
    open_until: AtomicU64,
    /// One probe at a time once the cooldown is over.
    probing: AtomicBool,
    trips: AtomicU64,
}

/// Whether a call may go to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Permit {
    Call,
    /// The single call that tests a server after the cooldown.
    Probe,
    Refused,
}

impl Breaker {
    pub(crate) fn new(threshold: u32, cooldown: Duration) -> Self {
        Breaker {
            threshold: threshold.max(1),
            cooldown,
            epoch: Instant::now(),
            consecutive_failures: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            probing: AtomicBool::new(false),
            trips: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    pub(crate) fn permit(&self) -> Permit {
        let open_until = self.open_until.load(Ordering::Acquire);
        if open_until == 0 {
            return Permit::Call;
        }
        if self.now() < open_until || self.probing.swap(true, Ordering::AcqRel) {
            return Permit::Refused;
        }
        Permit::Probe
    }

    pub(crate) fn success(&self, permit: Permit) {
        self.consecutive_failures.store(0, Ordering::Release);
        if permit == Permit::Probe {
            self.open_until.store(0, Ordering::Release);
            self.probing.store(false, Ordering::Release);
        }
    }

    pub(crate) fn failure(&self, permit: Permit) {
        let failures = self.consecutive_failures.fetch_add(1, Ordering::AcqRel) + 1;
        if permit == Permit::Probe || failures >= self.threshold {
            let reopened = self
                .open_until
                .swap(self.now() + self.cooldown.as_nanos() as u64, Ordering::AcqRel);
            if reopened == 0 {
                self.trips.fetch_add(1, Ordering::Relaxed);
                crate::metrics::export_count!("tower_response_cache_redis_breaker_trips_total"; 1);
            }
            self.probing.store(false, Ordering::Release);
        }
    }

    pub(crate) fn is_open(&self) -> bool {
        self.open_until.load(Ordering::Acquire) != 0
    }

    pub(crate) fn trips(&self) -> u64 {
        self.trips.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_after_the_threshold_and_probes_after_the_cooldown() {
        let b = Breaker::new(3, Duration::ZERO);
        for _ in 0..2 {
            b.failure(b.permit());
        }
        assert!(!b.is_open());
        b.failure(b.permit());
        assert!(b.is_open());
        assert_eq!(b.trips(), 1);
        // Cooldown of zero: the next call is the one probe; a second concurrent one is refused.
        assert_eq!(b.permit(), Permit::Probe);
        assert_eq!(b.permit(), Permit::Refused);
        b.success(Permit::Probe);
        assert!(!b.is_open());
        assert_eq!(b.permit(), Permit::Call);
    }

    #[test]
    fn refuses_during_the_cooldown_and_a_failed_probe_reopens() {
        let b = Breaker::new(1, Duration::from_secs(3600));
        b.failure(b.permit());
        assert_eq!(b.permit(), Permit::Refused);
        let b = Breaker::new(1, Duration::ZERO);
        b.failure(b.permit());
        let probe = b.permit();
        assert_eq!(probe, Permit::Probe);
        b.failure(probe);
        assert!(b.is_open());
        assert_eq!(b.trips(), 1, "a failed probe keeps the same trip open");
    }

    #[test]
    fn successes_reset_the_count() {
        let b = Breaker::new(2, Duration::from_secs(3600));
        b.failure(b.permit());
        b.success(b.permit());
        b.failure(b.permit());
        assert!(!b.is_open());
    }
}
