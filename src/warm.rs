//! Filling the cache ahead of traffic: once ([`CacheLayer::warm`]) or on a schedule
//! ([`CacheLayer::keep_warm`]).

use crate::future::HttpService;
use crate::status::{CacheOutcome, Served};
use crate::{CacheLayer, Store};
use futures_util::future::{select, Either};
use futures_util::StreamExt;
use http::Request;
use std::future::poll_fn;
use std::pin::pin;
use std::time::Duration;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tower_layer::Layer;
use tower_service::Service;

/// What [`CacheLayer::warm`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WarmReport {
    /// Requests sent.
    pub requested: usize,
    /// Responses stored.
    pub stored: usize,
    /// Requests already answered by a fresh entry (nothing to do).
    pub already_fresh: usize,
    /// Responses the cache would not store (see their [`CacheOutcome::not_stored`]).
    pub not_stored: usize,
    /// Requests the inner service failed.
    pub failed: usize,
}

impl<St: Store> CacheLayer<St> {
    /// Sends `requests` through this layer in front of `inner`, at most `concurrency` at a
    /// time, so that their responses are stored before traffic asks for them.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use axum::{routing::get, Router};
    /// use tower_response_cache::{CacheLayer, MemoryStore};
    ///
    /// let app: Router = Router::new().route("/books/{id}", get(|| async { "a book" }));
    /// let layer = CacheLayer::new(MemoryStore::new());
    /// let requests = (1..=20).map(|id| http::Request::get(format!("/books/{id}")).body(axum::body::Body::empty()).unwrap());
    /// let report = layer.warm(app, requests, 4).await;
    /// assert_eq!(report.stored, 20);
    /// # });
    /// ```
    pub async fn warm<S, ReqB, I>(&self, inner: S, requests: I, concurrency: usize) -> WarmReport
    where
        S: HttpService<ReqB>,
        ReqB: Send + 'static,
        I: IntoIterator<Item = Request<ReqB>>,
    {
        let service = self.layer(inner);
        let calls = futures_util::stream::iter(requests).map(move |mut request| {
            let mut service = service.clone();
            // No one reads these bodies: have them read whole and stored before the answer.
            request.extensions_mut().insert(crate::body::ReadWhole);
            async move {
                poll_fn(|cx| service.poll_ready(cx)).await?;
                service.call(request).await
            }
        });
        calls
            .buffer_unordered(concurrency.max(1))
            .fold(WarmReport::default(), |mut report, result| async move {
                report.requested += 1;
                let outcome = result.as_ref().map(|r| r.extensions().get::<CacheOutcome>().copied());
                match outcome {
                    Err(_) => report.failed += 1,
                    Ok(Some(o)) if matches!(o.served(), Served::Hit | Served::Stale(_)) => report.already_fresh += 1,
                    Ok(Some(o)) if o.stored() => report.stored += 1,
                    Ok(_) => report.not_stored += 1,
                }
                report
            })
            .await
    }
}

/// How [`CacheLayer::keep_warm`] repeats its rounds.
///
/// ```
/// use std::time::Duration;
/// use tower_response_cache::KeepWarm;
/// let schedule = KeepWarm::every(Duration::from_secs(60))
///     .jitter(Duration::from_secs(5))
///     .concurrency(8);
/// # drop(schedule);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepWarm {
    every: Duration,
    jitter: Duration,
    concurrency: usize,
}

impl KeepWarm {
    /// A round every `interval`, start to start (a round that overruns is followed by the
    /// next at once), 4 requests at a time, no jitter.
    pub const fn every(interval: Duration) -> Self {
        KeepWarm {
            every: interval,
            jitter: Duration::ZERO,
            concurrency: 4,
        }
    }

    /// Delays each next round by a random time up to `jitter`, so that instances started
    /// together do not warm in step.
    pub const fn jitter(mut self, jitter: Duration) -> Self {
        self.jitter = jitter;
        self
    }

    /// Requests in flight at most (at least 1).
    pub const fn concurrency(mut self, concurrency: usize) -> Self {
        self.concurrency = if concurrency == 0 { 1 } else { concurrency };
        self
    }
}

/// One round of [`CacheLayer::keep_warm`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct WarmRound {
    /// 1 for the first round, then counting up.
    pub round: u64,
    /// What the round did.
    pub report: WarmReport,
}

/// Controls the warming [`CacheLayer::keep_warm`] started: reports of its rounds, and a
/// stop. Dropping the handle stops the warming too.
#[derive(Debug)]
pub struct WarmHandle {
    stop: Option<oneshot::Sender<()>>,
    rounds: watch::Receiver<Option<WarmRound>>,
    task: Option<JoinHandle<()>>,
}

impl WarmHandle {
    /// The last round finished, if any.
    pub fn latest(&self) -> Option<WarmRound> {
        *self.rounds.borrow()
    }

    /// Waits for a round this handle has not reported yet and returns it (the latest, if
    /// several finished meanwhile); `None` once the warming has ended.
    pub async fn next_round(&mut self) -> Option<WarmRound> {
        self.rounds.changed().await.ok()?;
        *self.rounds.borrow_and_update()
    }

    /// Stops the warming, a round under way included, and waits until it has stopped.
    pub async fn stop(mut self) {
        drop(self.stop.take());
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for WarmHandle {
    fn drop(&mut self) {
        // Dropping the sender is the signal; the task ends at its next step.
        drop(self.stop.take());
    }
}

/// A random duration in `[0, bound]`, from the standard library's random hasher keys.
fn random_up_to(bound: Duration, round: u64) -> Duration {
    use std::hash::BuildHasher;
    let nanos = u64::try_from(bound.as_nanos()).unwrap_or(u64::MAX);
    if nanos == 0 {
        return Duration::ZERO;
    }
    let random = std::collections::hash_map::RandomState::new().hash_one(round);
    Duration::from_nanos(random % nanos.saturating_add(1))
}

impl<St: Store> CacheLayer<St> {
    /// Keeps the responses to `requests` warm: sends them through this layer in front of
    /// `inner` as [`warm`](Self::warm) does, at once and then on `schedule`, until the
    /// returned handle is stopped or dropped. `requests` is called for each round (requests
    /// are used up by sending them). Each round's [`WarmReport`] comes out of the handle.
    ///
    /// Entries still fresh count as [`already_fresh`](WarmReport::already_fresh) and cost
    /// the origin nothing, so an interval shorter than their lifetime refreshes only what
    /// has expired or been purged.
    ///
    /// # Panics
    ///
    /// Outside a Tokio runtime: the rounds run on a task spawned here.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use axum::{body::Body, routing::get, Router};
    /// use std::time::Duration;
    /// use tower_response_cache::{CacheLayer, KeepWarm, MemoryStore};
    ///
    /// let app: Router = Router::new().route("/books/{id}", get(|| async { "a book" }));
    /// let layer = CacheLayer::builder(MemoryStore::new()).default_ttl(Duration::from_secs(300)).build();
    /// let top_pages = || (1..=10).map(|id| http::Request::get(format!("/books/{id}")).body(Body::empty()).unwrap());
    /// let mut warming = layer.keep_warm(app, top_pages, KeepWarm::every(Duration::from_secs(60)));
    ///
    /// let first = warming.next_round().await.unwrap();
    /// assert_eq!((first.round, first.report.stored), (1, 10));
    /// warming.stop().await;
    /// # });
    /// ```
    pub fn keep_warm<S, ReqB, F, I>(&self, inner: S, requests: F, schedule: KeepWarm) -> WarmHandle
    where
        S: HttpService<ReqB>,
        ReqB: Send + 'static,
        F: Fn() -> I + Send + 'static,
        I: IntoIterator<Item = Request<ReqB>> + Send,
        I::IntoIter: Send,
    {
        let (stop, mut stopped) = oneshot::channel::<()>();
        let (report, rounds) = watch::channel(None);
        let layer = self.clone();
        let task = tokio::spawn(async move {
            for round in 1.. {
                let started = tokio::time::Instant::now();
                let warm = layer.warm(inner.clone(), requests(), schedule.concurrency);
                let Either::Left((done, _)) = select(pin!(warm), &mut stopped).await else {
                    return;
                };
                tracing::debug!(round, ?done, "warming round done");
                report.send_replace(Some(WarmRound { round, report: done }));
                let next = started + schedule.every + random_up_to(schedule.jitter, round);
                if let Either::Right(_) = select(pin!(tokio::time::sleep_until(next)), &mut stopped).await {
                    return;
                }
            }
        });
        WarmHandle {
            stop: Some(stop),
            rounds,
            task: Some(task),
        }
    }
}
