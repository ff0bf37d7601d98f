//! Single flight: concurrent misses on one key make one call to the inner service.
//!
//! The first miss becomes the leader of a flight; later misses wait on it. The leader settles
//! the flight with what waiters may do: read the stored entry, go alone (the resource cannot
//! be shared), or answer with the origin's failure. A leader that is dropped (cancelled) or
//! whose response could not be kept abandons the flight: waiters wake and one takes over.
//! Every flight has a deadline: past it, the flight no longer holds new misses, and its
//! waiters stop waiting. Nothing stays locked.

use crate::key::CacheKey;
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// How a flight ended. Waiters read the store again rather than take the leader's response:
/// the store applies purges that happened after the leader started, and `Vary`.
#[derive(Debug, Clone)]
pub(crate) enum Settlement {
    /// A response was stored: waiters look it up.
    Stored,
    /// The resource may not be shared (its status, `no-store`, its size...): each waiter goes
    /// to the origin itself, and the key is remembered as uncacheable for a while.
    Uncacheable,
    /// The origin failed and a stale entry answered instead: waiters may answer with it too.
    StaleOnError,
    /// The origin failed (a 5xx, an error): waiters present share that failure rather than
    /// each calling a failing origin. The next request elects a new leader.
    Failed(Arc<OriginFailure>),
    /// The response could not be kept (the store declined or failed, the body broke off, it
    /// answered the leader's credentials alone): one waiter takes over.
    Retry,
    /// The response was stored for the leader's identity alone: waiters with an identity go
    /// to the origin themselves, others take over.
    PerIdentity,
}

/// What a failing origin answered, as waiters replay it: a 5xx response, or `None` when the
/// inner service returned an error (waiters then answer `502 Bad Gateway`).
#[derive(Debug)]
pub(crate) struct OriginFailure {
    pub(crate) response: Option<(StatusCode, HeaderMap, Bytes)>,
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
    /// The flight passed its deadline, or the waiter its own timeout: go to the origin alone.
    TimedOut,
}

#[derive(Debug)]
struct InFlight {
    tx: watch::Sender<FlightState>,
    deadline: Instant,
}

#[derive(Debug)]
pub(crate) struct Coalescer {
    flights: Mutex<HashMap<CacheKey, InFlight>>,
    uncacheable: Mutex<HashMap<CacheKey, Instant>>,
    remember_uncacheable: Duration,
    /// How long a flight holds new misses (and its waiters) after its leader started.
    flight_deadline: Duration,
    /// Bumped by every settlement, so that a miss can tell whether a flight may have
    /// finished between its lookup and its join.
    generation: AtomicU64,
    /// Requests waiting on a flight right now.
    waiting: Arc<AtomicU64>,
}

/// Uncacheable keys remembered at most; past it, expired ones are swept, then all dropped.
const MAX_UNCACHEABLE: usize = 10_000;

impl Coalescer {
    pub(crate) fn new(remember_uncacheable: Duration, flight_deadline: Duration) -> Self {
        Coalescer {
            flights: Mutex::default(),
            uncacheable: Mutex::default(),
            remember_uncacheable,
            flight_deadline,
            generation: AtomicU64::new(0),
            waiting: Arc::default(),
        }
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Requests waiting on a flight right now.
    pub(crate) fn waiting(&self) -> u64 {
        self.waiting.load(Ordering::Relaxed)
    }

    pub(crate) fn join(self: &Arc<Self>, key: &CacheKey) -> Join {
        if self.is_uncacheable(key) {
            return Join::Uncacheable;
        }
        let now = Instant::now();
        let mut flights = self.flights.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(flight) = flights.get(key) {
            // A flight past its deadline no longer holds anyone: this miss leads a new one.
            if flight.deadline > now {
                return Join::Wait(Waiter::new(flight, &self.waiting));
            }
            tracing::warn!("a call to the inner service outlived its flight deadline; a new one starts");
        }
        let (tx, _) = watch::channel(FlightState::Pending);
        let deadline = now + self.flight_deadline;
        flights.insert(
            key.clone(),
            InFlight {
                tx: tx.clone(),
                deadline,
            },
        );
        Join::Lead(Flight {
            coalescer: self.clone(),
            key: key.clone(),
            tx,
            deadline,
            settled: false,
            held: None,
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
            if flights.get(key).is_some_and(|current| current.tx.same_channel(tx)) {
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
    deadline: Instant,
    settled: bool,
    /// Held as long as the flight (a fleet-wide lease), released after it settles.
    held: Option<Held>,
}

/// Something a flight keeps until it ends, given back when the flight is done with it.
pub(crate) trait Release: Send + Sync {
    /// Gives it back now (dropping it gives it back in the background).
    fn release(self: Box<Self>) -> futures_util::future::BoxFuture<'static, ()>;
}

/// What a flight holds.
pub(crate) struct Held(pub(crate) Box<dyn Release>);

impl Held {
    pub(crate) async fn release(self) {
        self.0.release().await;
    }
}

impl std::fmt::Debug for Held {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Held")
    }
}

impl Flight {
    /// The key the flight is for.
    pub(crate) fn key(&self) -> &CacheKey {
        &self.key
    }

    /// Keeps `held` until the flight ends (settled or abandoned).
    pub(crate) fn hold(&mut self, held: Held) {
        self.held = Some(held);
    }

    /// What the flight holds, for its leader to give back once it has settled it.
    pub(crate) fn take_held(&mut self) -> Option<Held> {
        self.held.take()
    }

    /// The instant past which the flight holds no one: the leader's own call may be bounded
    /// by it (background refreshes are).
    pub(crate) fn deadline(&self) -> Instant {
        self.deadline
    }

    pub(crate) fn settle(mut self, settlement: Settlement) {
        match &settlement {
            Settlement::Uncacheable => self.coalescer.remember(&self.key),
            Settlement::Stored => self.coalescer.forget(&self.key),
            Settlement::StaleOnError | Settlement::Failed(_) | Settlement::Retry | Settlement::PerIdentity => {}
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
    deadline: Instant,
    waiting: Arc<AtomicU64>,
}

impl Waiter {
    fn new(flight: &InFlight, waiting: &Arc<AtomicU64>) -> Self {
        waiting.fetch_add(1, Ordering::Relaxed);
        Waiter {
            rx: flight.tx.subscribe(),
            deadline: flight.deadline,
            waiting: waiting.clone(),
        }
    }

    /// Waits for the leader, at most `timeout` and never past the flight's deadline.
    pub(crate) async fn wait(mut self, timeout: Duration) -> Outcome {
        let timeout = timeout.min(self.deadline.saturating_duration_since(Instant::now()));
        let settled = self.rx.wait_for(|state| !matches!(state, FlightState::Pending));
        match tokio::time::timeout(timeout, settled).await {
            Err(_) => Outcome::TimedOut,
            // The sender is gone without a word: treat as abandoned.
            Ok(Err(_)) => Outcome::Abandoned,
            Ok(Ok(state)) => match &*state {
                FlightState::Settled(settlement) => Outcome::Settled(settlement.clone()),
                FlightState::Abandoned | FlightState::Pending => Outcome::Abandoned,
            },
        }
    }
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.waiting.fetch_sub(1, Ordering::Relaxed);
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
        let c = Arc::new(Coalescer::new(Duration::from_secs(5), Duration::from_secs(60)));
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
        let c = Arc::new(Coalescer::new(Duration::from_secs(5), Duration::from_secs(60)));
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
        let c = Arc::new(Coalescer::new(Duration::from_secs(60), Duration::from_secs(60)));
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
        let c = Arc::new(Coalescer::new(Duration::ZERO, Duration::from_secs(60)));
        let Join::Lead(_flight) = c.join(&key("a")) else {
            panic!()
        };
        let Join::Wait(w) = c.join(&key("a")) else { panic!() };
        assert!(matches!(w.wait(Duration::from_millis(10)).await, Outcome::TimedOut));
    }

    #[test]
    fn generation_moves_on_every_settlement() {
        let c = Arc::new(Coalescer::new(Duration::ZERO, Duration::from_secs(60)));
        let before = c.generation();
        let Join::Lead(flight) = c.join(&key("a")) else {
            panic!()
        };
        flight.settle(Settlement::Uncacheable);
        assert!(c.generation() > before);
    }

    #[tokio::test]
    async fn a_flight_past_its_deadline_holds_no_one() {
        let c = Arc::new(Coalescer::new(Duration::ZERO, Duration::from_millis(20)));
        let Join::Lead(hung) = c.join(&key("a")) else { panic!() };
        let Join::Wait(w) = c.join(&key("a")) else { panic!() };
        // The waiter stops at the flight's deadline, not at its own (longer) timeout.
        assert!(matches!(w.wait(Duration::from_secs(30)).await, Outcome::TimedOut));
        assert_eq!(c.waiting(), 0);
        let Join::Lead(next) = c.join(&key("a")) else {
            panic!("past its deadline the hung flight no longer holds new misses")
        };
        // The hung leader finishing late does not remove its successor's flight.
        hung.settle(Settlement::Retry);
        assert!(matches!(c.join(&key("a")), Join::Wait(_)));
        drop(next);
    }

    #[tokio::test]
    async fn failures_reach_every_waiter_and_are_not_remembered() {
        let c = Arc::new(Coalescer::new(Duration::from_secs(60), Duration::from_secs(60)));
        let Join::Lead(flight) = c.join(&key("a")) else {
            panic!()
        };
        let waiters: Vec<_> = (0..3)
            .map(|_| match c.join(&key("a")) {
                Join::Wait(w) => w,
                _ => panic!("waits"),
            })
            .collect();
        assert_eq!(c.waiting(), 3);
        flight.settle(Settlement::Failed(Arc::new(OriginFailure { response: None })));
        for w in waiters {
            assert!(matches!(
                w.wait(Duration::from_secs(5)).await,
                Outcome::Settled(Settlement::Failed(_))
            ));
        }
        assert!(matches!(c.join(&key("a")), Join::Lead(_)), "the next request leads");
    }
}
