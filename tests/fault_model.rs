//! A randomized model of purges racing fills while faults happen. A versioned origin: writers
//! bump an item's version and purge its tag; readers on two instances record what they got.
//! Once a purge has completed, no instance may serve an older version (no stale-if-error
//! window is configured, so there is no exception). Faults: the link of one instance to
//! Redis black-holed or reset, Redis frozen (`SIGSTOP`), Redis killed (`SIGKILL`) and
//! restarted empty; each Redis and tiered scenario's seeded schedule has every kind.
//!
//! "Completed" is when the mutation's response arrived and, if the purging store had to queue
//! the purge (Redis unreachable), when its queue has emptied: a purge made during a partition
//! cannot reach the other instances before then. Reads are judged against both: reads older
//! than a landed purge must be 0; reads older than a returned but still queued one (served
//! by another instance from Redis before the queue could land) are counted and reported.
#![cfg(feature = "redis")]

#[path = "../examples/support/redis_server.rs"]
mod redis_server;

#[path = "common/exchange.rs"]
mod exchange;
use exchange::exchange;

#[path = "common/proxy.rs"]
mod proxy;

#[path = "common/rng.rs"]
mod rng;
use rng::Rng;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Extension, Router};
use proxy::Proxy;
use redis_server::RedisServer;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tower_response_cache::store::{RedisStore, TieredStore};
use tower_response_cache::{CacheLayer, CacheTags, Invalidate, InvalidateLayer, MemoryStore, Store};

const ITEMS: usize = 6;
const READERS: usize = 6;
const WRITERS: usize = 4;

/// The origin: each item has a version; a read takes its version first and answers a little
/// later (the window in which a purge can overtake it).
#[derive(Clone, Default)]
struct Origin {
    versions: Arc<[AtomicU64; ITEMS]>,
    delays: Arc<AtomicU64>,
}

async fn read_item(State(origin): State<Origin>, Path(i): Path<usize>) -> (Extension<CacheTags>, String) {
    let version = origin.versions[i].load(SeqCst);
    let delay = origin.delays.fetch_add(1, SeqCst) % 4;
    tokio::time::sleep(Duration::from_millis(delay)).await;
    (Extension(CacheTags::new([format!("item:{i}")])), version.to_string())
}

async fn write_item(State(origin): State<Origin>, Path(i): Path<usize>) -> (StatusCode, Extension<Invalidate>, String) {
    let version = origin.versions[i].fetch_add(1, SeqCst) + 1;
    (
        StatusCode::OK,
        Extension(Invalidate::tags([format!("item:{i}")])),
        version.to_string(),
    )
}

fn instance<St: Store>(origin: &Origin, store: St) -> Router {
    Router::new()
        .route("/item/{i}", get(read_item).post(write_item))
        .with_state(origin.clone())
        .layer(InvalidateLayer::new(store.clone()))
        .layer(CacheLayer::builder(store).default_ttl(Duration::from_secs(60)).build())
}

async fn send(app: &Router, method: &str, uri: &str) -> (StatusCode, u64) {
    let (status, _, body) = exchange(app, method, uri).await;
    (status, body.parse().unwrap())
}

/// What the purging side can say about its queue: purges not yet landed in Redis.
type Pending = Arc<dyn Fn() -> u64 + Send + Sync>;

#[derive(Default)]
struct Tally {
    reads: AtomicUsize,
    purges: AtomicUsize,
    queued_purges: AtomicUsize,
    /// Reads older than a purge whose mutation had returned while its store still had purges
    /// queued (this one, or later ones: a queue that never empties keeps them all counted).
    before_landing: AtomicUsize,
    /// Reads older than a purge that had landed: must be 0.
    violations: AtomicUsize,
    examples: Mutex<Vec<String>>,
}

/// Runs readers and writers on `apps` while `faults` runs; returns the tally.
async fn run(
    apps: Vec<Router>,
    pendings: Vec<Pending>,
    faults: impl std::future::Future<Output = ()>,
    seed: u64,
) -> Arc<Tally> {
    let origin_done = Arc::new(AtomicBool::new(false));
    // Per item: the newest version whose mutation returned, and whose purge landed.
    let returned: Arc<[AtomicU64; ITEMS]> = Arc::default();
    let landed: Arc<[AtomicU64; ITEMS]> = Arc::default();
    let tally = Arc::new(Tally::default());
    let mut tasks = Vec::new();
    for reader in 0..READERS {
        let (apps, returned, landed, tally, done) = (
            apps.clone(),
            returned.clone(),
            landed.clone(),
            tally.clone(),
            origin_done.clone(),
        );
        let mut rng = Rng(seed ^ ((reader as u64 + 1) * 0x9e37_79b9));
        tasks.push(tokio::spawn(async move {
            while !done.load(SeqCst) {
                let on = rng.below(apps.len() as u64) as usize;
                let i = rng.below(ITEMS as u64) as usize;
                let (floor_returned, floor_landed) = (returned[i].load(SeqCst), landed[i].load(SeqCst));
                let (status, version) = send(&apps[on], "GET", &format!("/item/{i}")).await;
                assert_eq!(status, StatusCode::OK, "a fault failed a read");
                tally.reads.fetch_add(1, SeqCst);
                if version < floor_returned {
                    tally.before_landing.fetch_add(1, SeqCst);
                }
                if version < floor_landed {
                    tally.violations.fetch_add(1, SeqCst);
                    let mut examples = tally.examples.lock().unwrap();
                    if examples.len() < 5 {
                        examples.push(format!(
                            "instance {on} item {i}: got v{version}, v{floor_landed} had landed"
                        ));
                    }
                }
                tokio::time::sleep(Duration::from_millis(rng.below(3))).await;
            }
        }));
    }
    // Purges that returned queued: (instance, item, version), until their queue empties.
    let queued: Arc<Mutex<Vec<(usize, usize, u64)>>> = Arc::default();
    let lander = {
        let (pendings, landed, queued, done) = (pendings.clone(), landed.clone(), queued.clone(), origin_done.clone());
        tokio::spawn(async move {
            while !done.load(SeqCst) || !queued.lock().unwrap().is_empty() {
                queued.lock().unwrap().retain(|&(on, i, version)| {
                    let still_queued = pendings[on]() > 0;
                    if !still_queued {
                        landed[i].fetch_max(version, SeqCst);
                    }
                    still_queued
                });
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
    };
    for writer in 0..WRITERS {
        let (apps, pendings, returned, landed, tally, done, queued) = (
            apps.clone(),
            pendings.clone(),
            returned.clone(),
            landed.clone(),
            tally.clone(),
            origin_done.clone(),
            queued.clone(),
        );
        let mut rng = Rng(seed ^ ((writer as u64 + 101) * 0x2545_f491));
        tasks.push(tokio::spawn(async move {
            while !done.load(SeqCst) {
                let on = rng.below(apps.len() as u64) as usize;
                let i = rng.below(ITEMS as u64) as usize;
                let (status, version) = send(&apps[on], "POST", &format!("/item/{i}")).await;
                assert_eq!(status, StatusCode::OK, "a fault failed a mutation");
                tally.purges.fetch_add(1, SeqCst);
                returned[i].fetch_max(version, SeqCst);
                if pendings[on]() > 0 {
                    // Queued: it has landed once that store's queue has emptied.
                    tally.queued_purges.fetch_add(1, SeqCst);
                    queued.lock().unwrap().push((on, i, version));
                } else {
                    landed[i].fetch_max(version, SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(10 + rng.below(20))).await;
            }
        }));
    }
    faults.await;
    origin_done.store(true, SeqCst);
    tasks.push(lander);
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .expect("a model task hung")
            .unwrap();
    }
    tally
}

fn report(scenario: &str, tally: &Tally, faults: [usize; 4]) {
    let faults: Vec<String> = FAULTS.iter().zip(faults).map(|(f, n)| format!("{f:?} x{n}")).collect();
    eprintln!(
        "{scenario}: faults [{}]; {} reads, {} purges ({} queued), {} reads older than a returned purge while its store still had purges queued, {} violations {:?}",
        faults.join(", "),
        tally.reads.load(SeqCst),
        tally.purges.load(SeqCst),
        tally.queued_purges.load(SeqCst),
        tally.before_landing.load(SeqCst),
        tally.violations.load(SeqCst),
        tally.examples.lock().unwrap(),
    );
    assert!(
        tally.reads.load(SeqCst) > 200 && tally.purges.load(SeqCst) > 20,
        "{scenario}: too little traffic"
    );
    assert_eq!(tally.violations.load(SeqCst), 0, "{scenario}: purged data served");
}

/// The kinds of fault a schedule is made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// The link of the instance behind the proxy stops forwarding.
    BlackHole,
    /// The link of the instance behind the proxy closes every connection with a RST.
    Reset,
    /// Redis is frozen (`SIGSTOP`), then thawed (`SIGCONT`).
    Stop,
    /// Redis is killed (`SIGKILL`) and restarted empty.
    Kill,
}

const FAULTS: [Fault; 4] = [Fault::BlackHole, Fault::Reset, Fault::Stop, Fault::Kill];

/// A seeded schedule in which every kind of fault occurs: all four in a shuffled order, then
/// two more drawn at random.
fn schedule(seed: u64) -> Vec<Fault> {
    let mut rng = Rng(seed);
    let mut faults = FAULTS.to_vec();
    for i in (1..faults.len()).rev() {
        faults.swap(i, rng.below(i as u64 + 1) as usize);
    }
    for _ in 0..2 {
        faults.push(FAULTS[rng.below(FAULTS.len() as u64) as usize]);
    }
    faults
}

/// Waits (at most 5 s, else the test fails) until `done`: a link fault lasts until the
/// instance's traffic has met it.
async fn took_effect(what: &str, done: impl Fn() -> bool) {
    let met = async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(5), met)
        .await
        .unwrap_or_else(|_| panic!("no traffic met {what}"));
}

fn signal(server: &RedisServer, signal: &str) {
    let pid = server.pid().expect("running").to_string();
    let status = std::process::Command::new("kill")
        .args([signal, &pid])
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal} {pid}");
}

/// The faults of `schedule(seed)`, one after another, each for 300 to 600 ms with 400 ms
/// of health between them; returns how many of each kind took effect.
async fn faults(server: &mut RedisServer, proxy: &Proxy, seed: u64) -> [usize; 4] {
    let mut rng = Rng(seed ^ 0x5851_f42d);
    let pause = |ms: u64| tokio::time::sleep(Duration::from_millis(ms));
    let mut done = [0; 4];
    pause(400).await;
    for (round, fault) in schedule(seed).into_iter().enumerate() {
        let hold = 300 + rng.below(300);
        eprintln!("fault {round}: {fault:?} for {hold} ms");
        match fault {
            Fault::BlackHole => {
                let dropped = proxy.dropped();
                proxy.black_hole();
                pause(hold).await;
                // Held until the instance has sent something into it.
                took_effect("the black hole", || proxy.dropped() > dropped).await;
                proxy.heal();
            }
            Fault::Reset => {
                let resets = proxy.resets();
                proxy.reset();
                pause(hold).await;
                // Held until a connection of the instance's was reset.
                took_effect("the reset", || proxy.resets() > resets).await;
                proxy.heal();
            }
            Fault::Stop => {
                signal(server, "-STOP");
                pause(hold).await;
                signal(server, "-CONT");
            }
            Fault::Kill => {
                let pid = server.pid();
                server.kill();
                pause(hold).await;
                server.restart();
                assert_ne!(server.pid(), pid, "a new process");
            }
        }
        done[FAULTS.iter().position(|f| *f == fault).unwrap()] += 1;
        pause(400).await;
    }
    done
}

async fn redis(url: String, namespace: &str) -> RedisStore {
    RedisStore::builder(url)
        .namespace(namespace)
        .clock_skew_margin(Duration::ZERO)
        .connect()
        .await
        .expect("connect")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_store_under_racing_purges() {
    let origin = Origin::default();
    let store = MemoryStore::new();
    let apps = vec![instance(&origin, store.clone()), instance(&origin, store)];
    let none: Pending = Arc::new(|| 0);
    let tally = run(
        apps,
        vec![none.clone(), none],
        tokio::time::sleep(Duration::from_secs(3)),
        7,
    )
    .await;
    report("memory (seed 7)", &tally, [0; 4]);
    assert_eq!(tally.before_landing.load(SeqCst), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stores_under_faults() {
    if !redis_server::available() {
        return;
    }
    let mut server = RedisServer::start();
    let proxy = Proxy::start(([127, 0, 0, 1], server.port).into()).await;
    let origin = Origin::default();
    let (a, b) = (
        redis(proxy.url(), "model-r").await,
        redis(server.url(), "model-r").await,
    );
    let pendings: Vec<Pending> = vec![
        Arc::new({
            let a = a.clone();
            move || a.stats().pending_purges
        }),
        Arc::new({
            let b = b.clone();
            move || b.stats().pending_purges
        }),
    ];
    let apps = vec![instance(&origin, a), instance(&origin, b)];
    let done = Arc::new(Mutex::new([0; 4]));
    let faults = async {
        *done.lock().unwrap() = faults(&mut server, &proxy, 11).await;
    };
    let tally = run(apps, pendings, faults, 11).await;
    report("redis (seed 11)", &tally, *done.lock().unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tiered_stores_under_faults() {
    if !redis_server::available() {
        return;
    }
    let mut server = RedisServer::start();
    let proxy = Proxy::start(([127, 0, 0, 1], server.port).into()).await;
    let origin = Origin::default();
    let a = TieredStore::new(MemoryStore::new(), redis(proxy.url(), "model-t").await);
    let b = TieredStore::new(MemoryStore::new(), redis(server.url(), "model-t").await);
    let pendings: Vec<Pending> = vec![
        Arc::new({
            let a = a.clone();
            move || a.l2().stats().pending_purges
        }),
        Arc::new({
            let b = b.clone();
            move || b.l2().stats().pending_purges
        }),
    ];
    let apps = vec![instance(&origin, a), instance(&origin, b)];
    let done = Arc::new(Mutex::new([0; 4]));
    let faults = async {
        *done.lock().unwrap() = faults(&mut server, &proxy, 23).await;
    };
    let tally = run(apps, pendings, faults, 23).await;
    report("tiered (seed 23)", &tally, *done.lock().unwrap());
}
