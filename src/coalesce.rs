//! Single flight: concurrent misses on one key make one call to the inner service.
//!
//! The first miss becomes the leader of a flight; later misses wait on it. The leader settles
//! the flight with a shareable entry, or says the response could not be shared (the key is
//! then remembered as uncacheable for a while, so later requests do not queue behind one
//! another). A leader that is dropped (cancelled, or its inner service failed) abandons the
//! flight: waiters wake and one of them takes over. Nothing stays locked.

use crate::key::CacheKey;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How a flight ended. Waiters read the store again rather than take the leader's response:
/// the store applies purges that happened after the leader started, and `Vary`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Settlement {
    /// A response was stored: waiters look it up.
    Stored,
    /// The response may not be shared: each waiter goes to the origin itself.
    Uncacheable,
    /// The origin failed and a stale entry answered instead: waiters may answer with it too.
    StaleOnError,
    /// The origin failed (a 5xx, a broken body), or the response belonged to the leader's
    /// request alone (its credentials, `private`): a waiter takes over, and the key is not
    /// remembered as uncacheable.
    Failed,
}

#[derive(Debug, Clone)]
enum FlightState {
    Pending,
    Settled(Settlement),
    Abandoned,
}

/// What a miss should do.
#[derive(Debug)]
pub(crate) enum Join {
    /// Call the inner service and settle the flight.
    Lead(Flight),
    /// Wait for the leader.
    Wait(Waiter),
    /// The key was recently found uncacheable: go to the origin without waiting.
    Uncacheable,
}

/// What a waiter learned.
#[derive(Debug)]
pub(crate) enum Outcome {
    Settled(Settlement),
    /// The leader went away: try to take over.
    Abandoned,
    /// The leader is taking too long: go to the origin alone.
    TimedOut,
}

#[derive(Debug)]
pub(crate) struct Coalescer {
    flights: Mutex<HashMap<CacheKey, watch::Sender<FlightState>>>,
    uncacheable: Mutex<HashMap<CacheKey, Instant>>,
    remember_uncacheable: Duration,
    /// Bumped by every settlement, so that a miss can tell whether a flight may have
    /// finished between its lookup and its join.
    generation: AtomicU64,
}

/// Uncacheable keys remembered at most; past it, expired ones are swept, then all dropped.
const MAX_UNCACHEABLE: usize = 10_000;

impl Coalescer {
    pub(crate) fn new(remember_uncacheable: Duration) -> Self {
        Coalescer {
            flights: Mutex::default(),
            uncacheable: Mutex::default(),
            remember_uncacheable,
            generation: AtomicU64::new(0),
        }
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    pub(crate) fn join(self: &Arc<Self>, key: &CacheKey) -> Join {
        if self.is_uncacheable(key) {
            return Join::Uncacheable;
        }
        let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(tx) = flights.get(key) {
            return Join::Wait(Waiter { rx: tx.subscribe() });
        }
        let (tx, _) = watch::channel(FlightState::Pending);
        flights.insert(key.clone(), tx.clone());
        Join::Lead(Flight {
            coalescer: self.clone(),
            key: key.clone(),
            tx,
            settled: false,
        })
    }

    /// Leads a flight only if none is under way (for background refreshes).
    pub(crate) fn try_lead(self: &Arc<Self>, key: &CacheKey) -> Option<Flight> {
        match self.join(key) {
            Join::Lead(flight) => Some(flight),
            Join::Wait(_) | Join::Uncacheable => None,
        }
    }

    fn is_uncacheable(&self, key: &CacheKey) -> bool {
        let uncacheable = self.uncacheable.lock().unwrap_or_else(|p| p.into_inner());
        uncacheable.get(key).is_some_and(|until| *until > Instant::now())
    }

    fn remember(&self, key: &CacheKey) {
        if self.remember_uncacheable.is_zero() {
            return;
        }
        let mut uncacheable = self.uncacheable.lock().unwrap_or_else(|p| p.into_inner());
        if uncacheable.len() >= MAX_UNCACHEABLE {
            let now = Instant::now();
            uncacheable.retain(|_, until| *until > now);
            if uncacheable.len() >= MAX_UNCACHEABLE {
                uncacheable.clear();
            }
        }
        uncacheable.insert(key.clone(), Instant::now() + self.remember_uncacheable);
    }

    /// Forgets that a key was uncacheable (a later response to it was stored).
    fn forget(&self, key: &CacheKey) {
        self.uncacheable.lock().unwrap_or_else(|p| p.into_inner()).remove(key);
    }

    fn finish(&self, key: &CacheKey, tx: &watch::Sender<FlightState>, state: FlightState) {
        {
            let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
            // Only remove our own flight, never a successor's.
            if flights.get(key).is_some_and(|current| current.same_channel(tx)) {
                flights.remove(key);
            }
        }
        self.generation.fetch_add(1, Ordering::AcqRel);
        tx.send_replace(state);
    }

    #[cfg(test)]
    pub(crate) fn in_flight(&self) -> usize {
        self.flights.lock().unwrap().len()
    }
}

/// The leader's handle on its flight. Dropping it unsettled abandons the flight.
#[derive(Debug)]
pub(crate) struct Flight {
    coalescer: Arc<Coalescer>,
    key: CacheKey,
    tx: watch::Sender<FlightState>,
    settled: bool,
}

impl Flight {
    pub(crate) fn settle(mut self, settlement: Settlement) {
        match &settlement {
            Settlement::Uncacheable => self.coalescer.remember(&self.key),
            Settlement::Stored => self.coalescer.forget(&self.key),
            Settlement::StaleOnError | Settlement::Failed => {}
        }
        self.settled = true;
        self.coalescer
            .finish(&self.key, &self.tx, FlightState::Settled(settlement));
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        if !self.settled {
            self.coalescer.finish(&self.key, &self.tx, FlightState::Abandoned);
        }
    }
}

#[derive(Debug)]
pub(crate) struct Waiter {
    rx: watch::Receiver<FlightState>,
}

impl Waiter {
    pub(crate) async fn wait(mut self, timeout: Duration) -> Outcome {
        let settled = self.rx.wait_for(|state| !matches!(state, FlightState::Pending));
        match tokio::time::timeout(timeout, settled).await {
            Err(_) => Outcome::TimedOut,
            // The sender is gone without a word: treat as abandoned.
            Ok(Err(_)) => Outcome::Abandoned,
            Ok(Ok(state)) => match &*state {
                FlightState::Settled(settlement) => Outcome::Settled(*settlement),
                FlightState::Abandoned | FlightState::Pending => Outcome::Abandoned,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> CacheKey {
        CacheKey::from_bytes(k.as_bytes().to_vec())
    }

    #[tokio::test]
    async fn one_leader_and_waiters_get_its_entry() {
        let c = Arc::new(Coalescer::new(Duration::from_secs(5)));
        let Join::Lead(flight) = c.join(&key("a")) else {
            panic!("first is leader")
        };
        let Join::Wait(w1) = c.join(&key("a")) else {
            panic!("second waits")
        };
        let Join::Lead(_other) = c.join(&key("b")) else {
            panic!("other keys lead")
        };
        flight.settle(Settlement::Stored);
        assert!(matches!(
            w1.wait(Duration::from_secs(5)).await,
            Outcome::Settled(Settlement::Stored)
        ));
        assert_eq!(c.in_flight(), 1, "settled flights leave the table");
    }

    #[tokio::test]
    async fn dropped_leader_abandons_and_a_waiter_takes_over() {
        let c = Arc::new(Coalescer::new(Duration::from_secs(5)));
        let Join::Lead(flight) = c.join(&key("a")) else {
            panic!()
        };
        let Join::Wait(w) = c.join(&key("a")) else { panic!() };
        drop(flight);
        assert!(matches!(w.wait(Duration::from_secs(5)).await, Outcome::Abandoned));
        assert!(matches!(c.join(&key("a")), Join::Lead(_)), "nothing stays locked");
    }

    #[tokio::test]
    async fn uncacheable_keys_are_remembered_then_forgotten() {
        let c = Arc::new(Coalescer::new(Duration::from_secs(60)));
        let Join::Lead(flight) = c.join(&key("a")) else {
            panic!()
        };
        let Join::Wait(w) = c.join(&key("a")) else { panic!() };
        flight.settle(Settlement::Uncacheable);
        assert!(matches!(
            w.wait(Duration::from_secs(5)).await,
            Outcome::Settled(Settlement::Uncacheable)
        ));
        assert!(matches!(c.join(&key("a")), Join::Uncacheable));
        assert!(c.try_lead(&key("a")).is_none());
    }

    #[tokio::test]
    async fn waits_are_bounded() {
        let c = Arc::new(Coalescer::new(Duration::ZERO));
        let Join::Lead(_flight) = c.join(&key("a")) else {
            panic!()
        };
        let Join::Wait(w) = c.join(&key("a")) else { panic!() };
        assert!(matches!(w.wait(Duration::from_millis(10)).await, Outcome::TimedOut));
    }

    #[test]
    fn generation_moves_on_every_settlement() {
        let c = Arc::new(Coalescer::new(Duration::ZERO));
        let before = c.generation();
        let Join::Lead(flight) = c.join(&key("a")) else {
            panic!()
        };
        flight.settle(Settlement::Uncacheable);
        assert!(c.generation() > before);
    }
}
