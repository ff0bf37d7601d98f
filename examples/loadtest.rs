//! Load test: the same workloads against every backend, side by side, over loopback.
//!
//! Run: `cargo run --release --example loadtest --features redis`
//! (about four minutes; `-- --quick` for a smoke run of a few seconds, `-- --help` for options).
//!
//! It starts an axum server on 127.0.0.1:0 and drives it from a separate hyper client, on a
//! runtime of its own, over `--concurrency` keep-alive connections. Backends: `none` (no cache,
//! the handler sleeps 2 ms), `static` (no cache, the handler returns a static body: the ceiling
//! of the stack), `memory` (`MemoryStore`), `redis` (`RedisStore`) and `tiered` (`TieredStore`
//! over the same Redis), every cached backend in front of the 2 ms handler. Workloads: `hot`
//! (one key), `zipf` (10,000 keys, Zipf s = 1), `mixed` (the Zipf load with 1% POSTs whose
//! `Invalidate` extension purges the item's tag through `InvalidateLayer`) and `stampede`
//! (bursts of `--burst` concurrent requests for a cold key). Redis is a child `redis-server`
//! on a free loopback port; where it is not installed the redis and tiered rows are skipped.
//!
//! For each backend and workload it reports requests/s, p50/p99/p999 latency, the hit ratio
//! (`; hit` in `Cache-Status`), origin calls and the process's resident memory, and writes
//! `bench-results/loadtest.md` (a table) and `bench-results/loadtest.svg` (grouped bars).
//! Every scenario runs `--rounds` times (3), one round after another, and each row is its
//! median run; the ratios between backends are taken within a round, since a shared machine's
//! speed drifts more over minutes than between neighbouring runs.

#[path = "support/redis_server.rs"]
mod redis_server;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use axum::{Extension, Router};
use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL};
use http::{Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use redis_server::RedisServer;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::runtime::Runtime;
use tower_response_cache::store::{RedisStore, TieredStore};
use tower_response_cache::{CacheLayer, CacheTags, Invalidate, InvalidateLayer, MemoryStore, Store};

const BODY_BYTES: usize = 1024;
const ORIGIN_DELAY: Duration = Duration::from_millis(2);
const ZIPF_KEYS: usize = 10_000;
const ZIPF_EXPONENT: f64 = 1.0;
/// The share of requests that are POSTs in the mixed workload.
const WRITE_SHARE: f64 = 0.01;
/// Stampede keys start here, far from the Zipf keys, so that every burst finds its key cold.
const COLD_KEYS_FROM: u64 = 1_000_000;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    None,
    Static,
    Memory,
    Redis,
    Tiered,
}

impl Backend {
    const ALL: [Backend; 5] = [
        Backend::None,
        Backend::Static,
        Backend::Memory,
        Backend::Redis,
        Backend::Tiered,
    ];

    fn name(self) -> &'static str {
        match self {
            Backend::None => "none",
            Backend::Static => "static",
            Backend::Memory => "memory",
            Backend::Redis => "redis",
            Backend::Tiered => "tiered",
        }
    }

    fn needs_redis(self) -> bool {
        matches!(self, Backend::Redis | Backend::Tiered)
    }

    fn is_cached(self) -> bool {
        !matches!(self, Backend::None | Backend::Static)
    }

    /// Bar colour in the plot.
    fn colour(self) -> &'static str {
        match self {
            Backend::None => "#9e9e9e",
            Backend::Static => "#424242",
            Backend::Memory => "#1f77b4",
            Backend::Redis => "#d62728",
            Backend::Tiered => "#9467bd",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Workload {
    Hot,
    Zipf,
    Mixed,
    Stampede,
}

impl Workload {
    const ALL: [Workload; 4] = [Workload::Hot, Workload::Zipf, Workload::Mixed, Workload::Stampede];

    fn name(self) -> &'static str {
        match self {
            Workload::Hot => "hot",
            Workload::Zipf => "zipf",
            Workload::Mixed => "mixed",
            Workload::Stampede => "stampede",
        }
    }
}

fn parse_names<T: Copy>(list: &str, all: &[T], name: fn(T) -> &'static str) -> Result<Vec<T>, String> {
    list.split(',')
        .map(|wanted| {
            all.iter()
                .copied()
                .find(|item| name(*item) == wanted)
                .ok_or_else(|| format!("unknown name `{wanted}`"))
        })
        .collect()
}

const USAGE: &str = "\
usage: cargo run --release --example loadtest --features redis -- [options]

  --concurrency N     keep-alive connections, one request at a time each (default 32)
  --duration D        measured time per scenario, e.g. 3s or 300ms (default 3s)
  --warmup D          unmeasured time before it, same workload (default 1s)
  --burst N           concurrent requests per stampede burst (default 1000)
  --rounds N          run every scenario N times, the rounds interleaved, and report for
                      each the run of median throughput, with the range (default 3)
  --server-threads N  worker threads of the server's runtime (default: all cores)
  --client-threads N  worker threads of the client's runtime (default: all cores)
  --backends LIST     comma-separated subset of none,static,memory,redis,tiered
  --workloads LIST    comma-separated subset of hot,zipf,mixed,stampede
  --out DIR           where loadtest.md and loadtest.svg go (default bench-results,
                      or target/loadtest-quick with --quick)
  --quick             smoke run of about 8 s: one round, 300 ms per scenario after 100 ms
                      of warm-up, bursts of 200
";

#[derive(Debug, Clone)]
struct Options {
    concurrency: usize,
    duration: Duration,
    warmup: Duration,
    burst: usize,
    rounds: usize,
    server_threads: usize,
    client_threads: usize,
    backends: Vec<Backend>,
    workloads: Vec<Workload>,
    out: PathBuf,
    quick: bool,
    command: String,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    let (number, unit) = match text.strip_suffix("ms") {
        Some(number) => (number, 1e-3),
        None => (text.strip_suffix('s').unwrap_or(text), 1.0),
    };
    number
        .parse::<f64>()
        .ok()
        .filter(|n| n.is_finite() && *n >= 0.0)
        .map(|n| Duration::from_secs_f64(n * unit))
        .ok_or_else(|| format!("invalid duration `{text}`"))
}

impl Options {
    fn parse(args: impl IntoIterator<Item = String>) -> Result<Options, String> {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let mut options = Options {
            concurrency: 32,
            duration: Duration::from_secs(3),
            warmup: Duration::from_secs(1),
            burst: 1000,
            rounds: 3,
            server_threads: cores,
            client_threads: cores,
            backends: Backend::ALL.to_vec(),
            workloads: Workload::ALL.to_vec(),
            out: PathBuf::from("bench-results"),
            quick: false,
            command: "cargo run --release --example loadtest --features redis".into(),
        };
        let (mut duration, mut warmup, mut burst, mut rounds, mut out) = (None, None, None, None, None);
        let mut args = args.into_iter();
        let mut shown = Vec::new();
        while let Some(flag) = args.next() {
            shown.push(flag.clone());
            if flag == "--quick" {
                options.quick = true;
                continue;
            }
            if flag == "--help" || flag == "-h" {
                return Err(String::new());
            }
            const WITH_VALUE: [&str; 10] = [
                "--concurrency",
                "--duration",
                "--warmup",
                "--burst",
                "--rounds",
                "--server-threads",
                "--client-threads",
                "--backends",
                "--workloads",
                "--out",
            ];
            if !WITH_VALUE.contains(&flag.as_str()) {
                return Err(format!("unknown option {flag}"));
            }
            let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
            shown.push(value.clone());
            let count = || {
                value
                    .parse::<usize>()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or_else(|| format!("{flag}: `{value}` is not a positive number"))
            };
            match flag.as_str() {
                "--concurrency" => options.concurrency = count()?,
                "--duration" => duration = Some(parse_duration(&value)?),
                "--warmup" => warmup = Some(parse_duration(&value)?),
                "--burst" => burst = Some(count()?),
                "--rounds" => rounds = Some(count()?),
                "--server-threads" => options.server_threads = count()?,
                "--client-threads" => options.client_threads = count()?,
                "--backends" => options.backends = parse_names(&value, &Backend::ALL, Backend::name)?,
                "--workloads" => options.workloads = parse_names(&value, &Workload::ALL, Workload::name)?,
                "--out" => out = Some(PathBuf::from(value)),
                _ => return Err(format!("unknown option {flag}")),
            }
        }
        if options.quick {
            options.duration = Duration::from_millis(300);
            options.warmup = Duration::from_millis(100);
            options.burst = 200;
            options.rounds = 1;
            options.out = PathBuf::from("target/loadtest-quick");
        }
        options.duration = duration.unwrap_or(options.duration);
        options.warmup = warmup.unwrap_or(options.warmup);
        options.burst = burst.unwrap_or(options.burst);
        options.rounds = rounds.unwrap_or(options.rounds);
        options.out = out.unwrap_or(options.out);
        if options.duration.is_zero() {
            return Err("--duration must be more than zero".into());
        }
        if !shown.is_empty() {
            options.command = format!("{} -- {}", options.command, shown.join(" "));
        }
        Ok(options)
    }
}

/// xorshift64*: a small generator with a fixed seed per client connection, so that runs repeat.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Zipf(s) over ranks 0..n (rank 0 the most requested), sampled by binary search in the
/// cumulative distribution.
struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    fn new(n: usize, s: f64) -> Self {
        let mut total = 0.0;
        let mut cumulative: Vec<f64> = (1..=n)
            .map(|rank| {
                total += (rank as f64).powf(-s);
                total
            })
            .collect();
        cumulative.iter_mut().for_each(|c| *c /= total);
        Zipf { cumulative }
    }

    fn sample(&self, rng: &mut Rng) -> usize {
        let u = rng.unit();
        self.cumulative
            .partition_point(|&c| c <= u)
            .min(self.cumulative.len() - 1)
    }
}

/// The application behind every backend: GET an item (counted, 2 ms unless static), POST to
/// it (its tag is purged once the POST succeeds).
#[derive(Clone)]
struct Origin {
    calls: Arc<AtomicU64>,
    writes: Arc<AtomicU64>,
    body: Bytes,
}

impl Origin {
    fn new() -> Self {
        Origin {
            calls: Arc::default(),
            writes: Arc::default(),
            body: Bytes::from(vec![b'x'; BODY_BYTES]),
        }
    }
}

fn cacheable() -> [(http::HeaderName, HeaderValue); 1] {
    [(CACHE_CONTROL, HeaderValue::from_static("public, max-age=300"))]
}

async fn slow_item(State(origin): State<Origin>, Path(id): Path<u64>) -> Response {
    origin.calls.fetch_add(1, Relaxed);
    tokio::time::sleep(ORIGIN_DELAY).await;
    let tags = CacheTags::new([format!("item:{id}")]);
    (cacheable(), Extension(tags), origin.body.clone()).into_response()
}

async fn static_item(State(origin): State<Origin>) -> Response {
    origin.calls.fetch_add(1, Relaxed);
    (cacheable(), origin.body.clone()).into_response()
}

async fn update_item(State(origin): State<Origin>, Path(id): Path<u64>) -> (StatusCode, Extension<Invalidate>) {
    origin.writes.fetch_add(1, Relaxed);
    (
        StatusCode::NO_CONTENT,
        Extension(Invalidate::tags([format!("item:{id}")])),
    )
}

fn cached<St: Store>(router: Router, store: St) -> Router {
    router
        .layer(InvalidateLayer::new(store.clone()))
        .layer(CacheLayer::builder(store).default_ttl(Duration::from_secs(300)).build())
}

/// Builds the application for `backend`; runs on the server's runtime, where the Redis
/// connections and the tiered store's subscription live.
async fn application(backend: Backend, origin: Origin, redis_url: Option<String>, scenario: usize) -> Router {
    let routes = match backend {
        Backend::Static => get(static_item).post(update_item),
        _ => get(slow_item).post(update_item),
    };
    let router = Router::new().route("/items/{id}", routes).with_state(origin);
    // Server and Redis share this machine's clock: no skew margin is needed (see the notes).
    let redis = || async {
        RedisStore::builder(redis_url.clone().expect("redis backends run with a server"))
            .namespace(format!("loadtest{scenario}"))
            .clock_skew_margin(Duration::ZERO)
            .connect()
            .await
            .expect("connect to the loadtest's redis-server")
    };
    match backend {
        Backend::None | Backend::Static => router,
        Backend::Memory => cached(router, MemoryStore::new()),
        Backend::Redis => cached(router, redis().await),
        Backend::Tiered => {
            let store = TieredStore::new(MemoryStore::new(), redis().await);
            let deadline = Instant::now() + Duration::from_secs(10);
            while !store.stats().subscribed {
                assert!(Instant::now() < deadline, "the tiered store did not subscribe");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            cached(router, store)
        }
    }
}

/// What one client connection (or one stampede burst) saw.
#[derive(Debug, Default)]
struct Sample {
    latencies: Vec<Duration>,
    gets: u64,
    hits: u64,
    posts: u64,
    errors: u64,
}

impl Sample {
    fn merge(&mut self, other: Sample) {
        self.latencies.extend(other.latencies);
        self.gets += other.gets;
        self.hits += other.hits;
        self.posts += other.posts;
        self.errors += other.errors;
    }
}

/// One request; `Ok(true)` when the cache answered it.
async fn send(client: &HttpClient, method: Method, uri: Uri) -> Result<bool, String> {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .body(Empty::new())
        .map_err(|e| e.to_string())?;
    let call = async {
        let response = client.request(request).await.map_err(|e| e.to_string())?;
        let hit = response
            .headers()
            .get("cache-status")
            .is_some_and(|v| v.as_bytes().windows(5).any(|w| w == b"; hit"));
        let ok = response.status().is_success();
        response.into_body().collect().await.map_err(|e| e.to_string())?;
        if ok {
            Ok(hit)
        } else {
            Err("unsuccessful status".to_owned())
        }
    };
    tokio::time::timeout(REQUEST_TIMEOUT, call)
        .await
        .map_err(|_| "timed out".to_owned())?
}

/// Which item a connection asks for next, and how.
#[derive(Clone)]
enum Pick {
    Hot,
    Zipf(Arc<Zipf>),
    Mixed(Arc<Zipf>),
}

impl Pick {
    fn next(&self, rng: &mut Rng) -> (Method, usize) {
        match self {
            Pick::Hot => (Method::GET, 0),
            Pick::Zipf(zipf) => (Method::GET, zipf.sample(rng)),
            Pick::Mixed(zipf) => {
                let method = if rng.unit() < WRITE_SHARE {
                    Method::POST
                } else {
                    Method::GET
                };
                (method, zipf.sample(rng))
            }
        }
    }
}

/// One keep-alive connection's loop: a request at a time until `deadline`, recording those
/// that start at or after `record_from`.
async fn connection_loop(
    client: HttpClient,
    uris: Arc<Vec<Uri>>,
    pick: Pick,
    mut rng: Rng,
    record_from: Instant,
    deadline: Instant,
) -> Sample {
    let mut sample = Sample::default();
    loop {
        let start = Instant::now();
        if start >= deadline {
            return sample;
        }
        let (method, index) = pick.next(&mut rng);
        let is_get = method == Method::GET;
        let outcome = send(&client, method, uris[index].clone()).await;
        if start < record_from {
            continue;
        }
        match outcome {
            Ok(hit) => {
                sample.latencies.push(start.elapsed());
                if is_get {
                    sample.gets += 1;
                    sample.hits += u64::from(hit);
                } else {
                    sample.posts += 1;
                }
            }
            Err(_) => sample.errors += 1,
        }
    }
}

/// The client side of one scenario, measured.
struct Measured {
    sample: Sample,
    window: Duration,
    origin_calls: u64,
    writes: u64,
    bursts: Option<u64>,
}

fn http_client(connections: usize) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(connections)
        .build(connector)
}

async fn drive_steady(addr: SocketAddr, workload: Workload, origin: &Origin, options: &Options) -> Measured {
    let client = http_client(options.concurrency);
    let keys = if workload == Workload::Hot { 1 } else { ZIPF_KEYS };
    let uris: Arc<Vec<Uri>> = Arc::new(
        (0..keys)
            .map(|id| format!("http://{addr}/items/{id}").parse().expect("uri"))
            .collect(),
    );
    let zipf = Arc::new(Zipf::new(ZIPF_KEYS, ZIPF_EXPONENT));
    let pick = match workload {
        Workload::Hot => Pick::Hot,
        Workload::Zipf => Pick::Zipf(zipf),
        _ => Pick::Mixed(zipf),
    };
    let record_from = Instant::now() + options.warmup;
    let deadline = record_from + options.duration;
    let connections: Vec<_> = (0..options.concurrency)
        .map(|i| {
            let rng = Rng::new(i as u64 + 1);
            tokio::spawn(connection_loop(
                client.clone(),
                uris.clone(),
                pick.clone(),
                rng,
                record_from,
                deadline,
            ))
        })
        .collect();
    tokio::time::sleep_until(record_from.into()).await;
    let (calls, writes) = (origin.calls.load(Relaxed), origin.writes.load(Relaxed));
    tokio::time::sleep_until(deadline.into()).await;
    let origin_calls = origin.calls.load(Relaxed) - calls;
    let writes = origin.writes.load(Relaxed) - writes;
    let mut sample = Sample::default();
    for connection in connections {
        // Every request is bounded by REQUEST_TIMEOUT, so this ends soon after the deadline.
        sample.merge(connection.await.expect("a connection loop panicked"));
    }
    Measured {
        sample,
        window: options.duration,
        origin_calls,
        writes,
        bursts: None,
    }
}

async fn drive_stampede(addr: SocketAddr, origin: &Origin, options: &Options) -> Measured {
    let client = http_client(options.burst);
    let record_from = Instant::now() + options.warmup;
    let deadline = record_from + options.duration;
    let mut sample = Sample::default();
    let (mut bursts, mut origin_calls) = (0, 0);
    let mut measured_from = None;
    let mut key = COLD_KEYS_FROM;
    loop {
        let burst_start = Instant::now();
        if burst_start >= deadline {
            break;
        }
        key += 1;
        let uri: Uri = format!("http://{addr}/items/{key}").parse().expect("uri");
        let calls = origin.calls.load(Relaxed);
        let requests: Vec<_> = (0..options.burst)
            .map(|_| {
                let (client, uri) = (client.clone(), uri.clone());
                tokio::spawn(async move {
                    let start = Instant::now();
                    let outcome = send(&client, Method::GET, uri).await;
                    (start.elapsed(), outcome)
                })
            })
            .collect();
        let mut burst = Sample::default();
        for request in requests {
            match request.await.expect("a request task panicked") {
                (latency, Ok(hit)) => {
                    burst.latencies.push(latency);
                    burst.gets += 1;
                    burst.hits += u64::from(hit);
                }
                (_, Err(_)) => burst.errors += 1,
            }
        }
        if burst_start >= record_from {
            measured_from.get_or_insert(burst_start);
            bursts += 1;
            origin_calls += origin.calls.load(Relaxed) - calls;
            sample.merge(burst);
        }
    }
    Measured {
        sample,
        window: measured_from.map_or(options.duration, |from| from.elapsed()),
        origin_calls,
        writes: 0,
        bursts: Some(bursts),
    }
}

/// Resident memory of this process, from /proc/self/status, in KiB: (VmHWM, VmRSS).
fn resident_kib() -> (Option<u64>, Option<u64>) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Resets VmHWM to the current RSS (Linux 4.0+), so that each scenario reports its own peak.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

#[derive(Debug)]
struct Row {
    backend: Backend,
    workload: Workload,
    throughput: f64,
    /// The lowest and highest throughput over the rounds, when there were several.
    range: Option<(f64, f64)>,
    p50: Duration,
    p99: Duration,
    p999: Duration,
    gets: u64,
    hits: u64,
    posts: u64,
    errors: u64,
    origin_calls: u64,
    writes: u64,
    bursts: Option<u64>,
    peak_rss_kib: Option<u64>,
    rss_kib: Option<u64>,
}

impl Row {
    fn hit_ratio(&self) -> Option<f64> {
        (self.backend.is_cached() && self.gets > 0).then(|| self.hits as f64 / self.gets as f64)
    }
}

/// The run of median throughput among a scenario's rounds, with their range.
fn median_run(mut runs: Vec<Row>) -> Row {
    runs.sort_by(|a, b| a.throughput.total_cmp(&b.throughput));
    let range = (runs.len() > 1).then(|| (runs[0].throughput, runs[runs.len() - 1].throughput));
    let mut median = runs.swap_remove(runs.len() / 2);
    median.range = range;
    median
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

struct Bench<'a> {
    server: &'a Runtime,
    client: &'a Runtime,
    redis: Option<&'a RedisServer>,
    options: &'a Options,
}

impl Bench<'_> {
    fn scenario(&self, backend: Backend, workload: Workload, index: usize) -> Row {
        let origin = Origin::new();
        let redis_url = self.redis.map(RedisServer::url);
        let app = self
            .server
            .block_on(application(backend, origin.clone(), redis_url, index));
        let listener = self
            .server
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .expect("bind a loopback port");
        let addr = listener.local_addr().expect("local address");
        let listener = listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = self.server.spawn(async move {
            let _ = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
        });

        reset_peak_rss();
        let measured = self.client.block_on(async {
            match workload {
                Workload::Stampede => drive_stampede(addr, &origin, self.options).await,
                _ => drive_steady(addr, workload, &origin, self.options).await,
            }
        });
        let (peak_rss_kib, rss_kib) = resident_kib();

        let _ = stop.send(());
        // The client is gone, so its connections close and the server ends; the store (in the
        // router) goes with it.
        let ended = self
            .server
            .block_on(async { tokio::time::timeout(Duration::from_secs(5), server).await });
        if ended.is_err() {
            eprintln!("warning: the {} server did not stop within 5 s", backend.name());
        }

        let Measured {
            mut sample,
            window,
            origin_calls,
            writes,
            bursts,
        } = measured;
        sample.latencies.sort_unstable();
        Row {
            backend,
            workload,
            throughput: sample.latencies.len() as f64 / window.as_secs_f64(),
            range: None,
            p50: percentile(&sample.latencies, 0.50),
            p99: percentile(&sample.latencies, 0.99),
            p999: percentile(&sample.latencies, 0.999),
            gets: sample.gets,
            hits: sample.hits,
            posts: sample.posts,
            errors: sample.errors,
            origin_calls,
            writes,
            bursts,
            peak_rss_kib,
            rss_kib,
        }
    }
}

fn format_latency(d: Duration) -> String {
    let micros = d.as_secs_f64() * 1e6;
    if micros < 1000.0 {
        format!("{micros:.0} µs")
    } else if micros < 10_000.0 {
        format!("{:.2} ms", micros / 1000.0)
    } else if micros < 100_000.0 {
        format!("{:.1} ms", micros / 1000.0)
    } else if micros < 1e6 {
        format!("{:.0} ms", micros / 1000.0)
    } else {
        format!("{:.1} s", micros / 1e6)
    }
}

/// A power of ten of microseconds, for the latency axis: `100 µs`, `1 ms`, `10 ms`.
fn format_decade(micros: f64) -> String {
    match micros {
        m if m < 1000.0 => format!("{m:.0} µs"),
        m if m < 1e6 => format!("{:.0} ms", m / 1000.0),
        m => format!("{:.0} s", m / 1e6),
    }
}

fn format_rate(rate: f64) -> String {
    if rate >= 10_000.0 {
        format!("{:.1}k", rate / 1000.0)
    } else {
        format!("{rate:.0}")
    }
}

fn format_mib(kib: Option<u64>) -> String {
    kib.map_or("n/a".into(), |k| format!("{:.0} MiB", k as f64 / 1024.0))
}

fn format_origin_calls(row: &Row) -> String {
    match row.bursts {
        Some(bursts) if bursts > 0 => format!(
            "{:.2} / burst ({bursts} bursts)",
            row.origin_calls as f64 / bursts as f64
        ),
        _ => row.origin_calls.to_string(),
    }
}

fn table(rows: &[Row]) -> String {
    let mut out = String::from(
        "| backend | workload | req/s | p50 | p99 | p999 | hit ratio | origin calls | peak RSS | RSS after |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for row in rows {
        let hit_ratio = row.hit_ratio().map_or("–".into(), |r| format!("{:.1}%", r * 100.0));
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            row.backend.name(),
            row.workload.name(),
            match row.range {
                Some((low, high)) => format!(
                    "{} ({}–{})",
                    format_rate(row.throughput),
                    format_rate(low),
                    format_rate(high)
                ),
                None => format_rate(row.throughput),
            },
            format_latency(row.p50),
            format_latency(row.p99),
            format_latency(row.p999),
            hit_ratio,
            format_origin_calls(row),
            format_mib(row.peak_rss_kib),
            format_mib(row.rss_kib),
        );
    }
    out
}

fn find(rows: &[Row], backend: Backend, workload: Workload) -> Option<&Row> {
    rows.iter().find(|r| r.backend == backend && r.workload == workload)
}

/// The ratios the README quotes, for the workloads where both backends ran. Each is taken
/// within a round (the two runs close in time) and the median over the rounds is reported,
/// with their range.
fn ratios(scenarios: &[(Backend, Workload)], runs: &[Vec<Row>]) -> String {
    let runs_of = |backend: Backend, workload: Workload| {
        scenarios
            .iter()
            .position(|s| *s == (backend, workload))
            .map(|i| &runs[i])
    };
    let ratio = |a: Backend, b: Backend, workload: Workload| -> Option<String> {
        let (a, b) = (runs_of(a, workload)?, runs_of(b, workload)?);
        let mut per_round: Vec<f64> = a
            .iter()
            .zip(b)
            .filter(|(_, b)| b.throughput > 0.0)
            .map(|(a, b)| a.throughput / b.throughput)
            .collect();
        per_round.sort_by(f64::total_cmp);
        let median = *per_round.get(per_round.len() / 2)?;
        Some(match per_round.len() {
            1 => format!("{} {median:.2}×", workload.name()),
            _ => format!(
                "{} {median:.2}× ({:.2}–{:.2})",
                workload.name(),
                per_round[0],
                per_round[per_round.len() - 1]
            ),
        })
    };
    let pairs = [
        (
            Backend::Memory,
            Backend::Static,
            "memory hits against the static-handler ceiling",
        ),
        (
            Backend::Tiered,
            Backend::Static,
            "tiered hits against the static-handler ceiling",
        ),
        (Backend::Redis, Backend::Memory, "redis against memory"),
        (Backend::Tiered, Backend::Memory, "tiered against memory"),
        (Backend::Memory, Backend::None, "memory against no cache (2 ms handler)"),
        (Backend::Redis, Backend::None, "redis against no cache (2 ms handler)"),
    ];
    let mut out = String::new();
    for (a, b, what) in pairs {
        let values: Vec<String> = [Workload::Hot, Workload::Zipf, Workload::Mixed]
            .into_iter()
            .filter_map(|w| ratio(a, b, w))
            .collect();
        if !values.is_empty() {
            let _ = writeln!(out, "- {what} (req/s): {}", values.join(", "));
        }
    }
    out
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|rest| rest.trim_start_matches([' ', '\t', ':']).trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

fn redis_version() -> Option<String> {
    let output = std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("v="))
        .map(str::to_owned)
}

/// CPU time in clock ticks: the whole machine's busy time, and that of the given processes,
/// so that what other processes took during the run can be told apart from the load test's.
#[derive(Debug, Clone, Copy)]
struct CpuTicks {
    machine: u64,
    ours: u64,
    steal: u64,
}

fn background_text(shares: Option<(f64, f64)>) -> String {
    match shares {
        Some((others, steal)) => format!(
            "other processes used {:.0}% of the machine's CPU and the hypervisor withheld {:.0}% (steal time)",
            others * 100.0,
            steal * 100.0
        ),
        None => "the machine's other load is unknown".into(),
    }
}

impl CpuTicks {
    fn now(pids: &[u32]) -> Option<CpuTicks> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let fields: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect();
        // user, nice and system: time spent in processes (interrupts are left out, since the
        // load test's own loopback traffic is much of them).
        let busy = fields.iter().take(3).sum::<u64>();
        let process = |path: String| -> Option<u64> {
            let text = std::fs::read_to_string(path).ok()?;
            // Fields after the parenthesised command name; utime and stime are the 12th and 13th.
            let rest = text.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
        };
        let mut ours = process("/proc/self/stat".into())?;
        for pid in pids {
            ours += process(format!("/proc/{pid}/stat")).unwrap_or(0);
        }
        Some(CpuTicks {
            machine: busy,
            ours,
            steal: *fields.get(7)?,
        })
    }

    /// The shares of the machine's CPU that other processes used, and that the hypervisor
    /// withheld, between `self` and `later`.
    fn background_shares(self, later: CpuTicks, elapsed: Duration, cores: usize) -> Option<(f64, f64)> {
        // Linux reports these in USER_HZ, 100 per second on every common configuration.
        let available = elapsed.as_secs_f64() * 100.0 * cores as f64;
        let others = (later.machine - self.machine).saturating_sub(later.ours - self.ours);
        let steal = later.steal - self.steal;
        (available > 0.0).then(|| (others as f64 / available, steal as f64 / available))
    }
}

struct RunInfo<'a> {
    notes: &'a [String],
    peak_reset: bool,
    /// The shares of the machine's CPU that other processes took during the run, and that the
    /// hypervisor withheld (steal time).
    background_cpu: Option<(f64, f64)>,
    ratios: String,
    /// Failed or timed-out requests over every round.
    errors: u64,
}

fn markdown(rows: &[Row], options: &Options, info: &RunInfo<'_>) -> String {
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut out = String::from("# Load test: backends side by side\n\n");
    let _ = writeln!(out, "Command: `{}`  ", options.command);
    let _ = writeln!(
        out,
        "Run: {}, {} ({cores} cores), redis-server {}; meanwhile {}.  ",
        httpdate::fmt_http_date(SystemTime::now()),
        cpu_model(),
        redis_version().unwrap_or_else(|| "not installed".into()),
        background_text(info.background_cpu),
    );
    let _ = writeln!(
        out,
        "Settings: {} keep-alive connections, {} measured per scenario after {} of warm-up, \
         stampede bursts of {}, 1 KiB bodies, server and client runtimes of {} and {} threads.{}\n",
        options.concurrency,
        format_latency(options.duration),
        format_latency(options.warmup),
        options.burst,
        options.server_threads,
        options.client_threads,
        match options.rounds {
            1 => String::new(),
            n => format!(
                " Every scenario ran {n} times, the rounds interleaved so that background load falls on every \
                 backend alike; each row is the run of median throughput, with the range of the {n} in brackets."
            ),
        },
    );
    out.push_str(&table(rows));
    out.push_str("\n![requests/s and p99 latency per backend and workload](loadtest.svg)\n\n");
    if !info.ratios.is_empty() {
        out.push_str("## Ratios\n\n");
        if options.rounds > 1 {
            out.push_str(
                "Each ratio is taken within a round, between runs a few seconds apart, then the median over \
                 the rounds is given with their range: the machine's speed drifts more between rounds than \
                 between backends of one round.\n\n",
            );
        }
        out.push_str(&info.ratios);
        out.push('\n');
    }
    out.push_str("## Notes\n\n");
    out.push_str(
        "- Backends: `none` and every cached backend wrap the same handler, which sleeps 2 ms; `static` \
         answers at once with the same body and no cache (the ceiling of the server, the client and \
         loopback together). `redis` and `tiered` use the loadtest's own `redis-server`, with no clock-skew \
         margin (server and Redis share one clock).\n",
    );
    out.push_str(
        "- Workloads: `hot` is one key; `zipf` draws from 10,000 keys with Zipf s = 1; `mixed` adds 1% POSTs \
         to Zipf-drawn items, each purging that item's tag; `stampede` sends bursts of concurrent requests \
         for one cold key each. Requests made during the warm-up are not counted, so the cache is partly warm \
         when measuring starts.\n",
    );
    out.push_str(
        "- Hit ratio counts GET responses whose `Cache-Status` says `; hit`. Coalesced waiters in a stampede \
         say `fwd=miss; collapsed`, so that workload's figure to read is origin calls per burst.\n",
    );
    out.push_str("- Origin calls are GET handler calls during the measured window.\n");
    let peak = if info.peak_reset {
        "reset to the current RSS before each scenario through `/proc/self/clear_refs`"
    } else {
        "monotone over the whole run (it could not be reset here)"
    };
    let _ = writeln!(
        out,
        "- Memory is the whole process's (server, client, both runtimes): peak RSS is VmHWM, {peak}; RSS after \
         is VmRSS at the end of the scenario, while its store is still alive. Freed memory is not always \
         returned to the system, so later rows carry some of earlier ones."
    );
    let writes: u64 = rows.iter().map(|r| r.writes).sum();
    let posts: u64 = rows.iter().map(|r| r.posts).sum();
    let _ = writeln!(
        out,
        "- POSTs measured: {posts} ({writes} reached the handler); failed or timed-out requests, over every \
         round: {}.",
        info.errors
    );
    for note in info.notes {
        let _ = writeln!(out, "- {note}");
    }
    out
}

/// A "nice" upper bound for a linear axis: 1, 2, 2.5 or 5 times a power of ten.
fn nice_ceiling(value: f64) -> f64 {
    if value <= 0.0 {
        return 1.0;
    }
    let magnitude = 10f64.powf(value.log10().floor());
    [1.0, 2.0, 2.5, 5.0, 10.0]
        .into_iter()
        .map(|m| m * magnitude)
        .find(|v| *v >= value)
        .unwrap_or(10.0 * magnitude)
}

/// Hand-written SVG: one panel of grouped bars per metric, a group per workload.
struct Plot {
    svg: String,
    width: f64,
    left: f64,
    right: f64,
}

struct Panel<'a> {
    title: &'a str,
    top: f64,
    height: f64,
    /// Maps a value to 0..=1 of the panel's height.
    scale: &'a dyn Fn(f64) -> f64,
    /// (value, label) gridlines.
    ticks: Vec<(f64, String)>,
    value: &'a dyn Fn(&Row) -> f64,
    label: &'a dyn Fn(&Row) -> String,
}

impl Plot {
    fn text(&mut self, x: f64, y: f64, anchor: &str, size: u32, text: &str) {
        let _ = writeln!(
            self.svg,
            r#"<text x="{x:.1}" y="{y:.1}" text-anchor="{anchor}" font-size="{size}">{text}</text>"#
        );
    }

    fn panel(&mut self, panel: &Panel<'_>, rows: &[Row], backends: &[Backend], workloads: &[Workload]) {
        let (left, right) = (self.left, self.width - self.right);
        let bottom = panel.top + panel.height;
        self.text(left, panel.top - 12.0, "start", 14, panel.title);
        for (value, label) in &panel.ticks {
            let y = bottom - (panel.scale)(*value) * panel.height;
            let _ = writeln!(
                self.svg,
                r##"<line x1="{left:.1}" y1="{y:.1}" x2="{right:.1}" y2="{y:.1}" stroke="#dddddd"/>"##
            );
            self.text(left - 6.0, y + 4.0, "end", 11, label);
        }
        let _ = writeln!(
            self.svg,
            r##"<line x1="{left:.1}" y1="{bottom:.1}" x2="{right:.1}" y2="{bottom:.1}" stroke="#333333"/>"##
        );
        let group_width = (right - left) / workloads.len().max(1) as f64;
        let bar_width = group_width * 0.8 / backends.len().max(1) as f64;
        for (g, workload) in workloads.iter().enumerate() {
            let group_left = left + g as f64 * group_width + group_width * 0.1;
            self.text(
                group_left + group_width * 0.4,
                bottom + 18.0,
                "middle",
                13,
                workload.name(),
            );
            for (b, backend) in backends.iter().enumerate() {
                let Some(row) = find(rows, *backend, *workload) else {
                    continue;
                };
                let height = (panel.scale)((panel.value)(row)).clamp(0.0, 1.0) * panel.height;
                let x = group_left + b as f64 * bar_width;
                let _ = writeln!(
                    self.svg,
                    r#"<rect x="{:.1}" y="{:.1}" width="{:.1}" height="{height:.1}" fill="{}"><title>{} {}: {}</title></rect>"#,
                    x + 1.0,
                    bottom - height,
                    bar_width - 2.0,
                    backend.colour(),
                    backend.name(),
                    workload.name(),
                    (panel.label)(row),
                );
                self.text(
                    x + bar_width / 2.0,
                    bottom - height - 3.0,
                    "middle",
                    9,
                    &(panel.label)(row),
                );
            }
        }
    }
}

fn svg(rows: &[Row], backends: &[Backend], workloads: &[Workload], subtitle: &str) -> String {
    let (width, height) = (1040.0, 730.0);
    let mut plot = Plot {
        svg: String::new(),
        width,
        left: 70.0,
        right: 20.0,
    };
    let _ = writeln!(
        plot.svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif">"#
    );
    let _ = writeln!(plot.svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    plot.text(
        width / 2.0,
        24.0,
        "middle",
        16,
        "tower-response-cache load test: backends side by side",
    );
    plot.text(width / 2.0, 42.0, "middle", 11, subtitle);
    let mut x = plot.left;
    for backend in backends {
        let _ = writeln!(
            plot.svg,
            r#"<rect x="{x:.1}" y="54" width="12" height="12" fill="{}"/>"#,
            backend.colour()
        );
        plot.text(x + 16.0, 64.0, "start", 12, backend.name());
        x += 90.0;
    }

    let max_rate = nice_ceiling(rows.iter().map(|r| r.throughput).fold(0.0, f64::max));
    let linear = move |v: f64| v / max_rate;
    let rate_ticks = (0..=5)
        .map(|i| {
            let v = max_rate * i as f64 / 5.0;
            (v, format_rate(v))
        })
        .collect();
    plot.panel(
        &Panel {
            title: "requests/s (higher is better)",
            top: 110.0,
            height: 250.0,
            scale: &linear,
            ticks: rate_ticks,
            value: &|r| r.throughput,
            label: &|r| format_rate(r.throughput),
        },
        rows,
        backends,
        workloads,
    );

    // p99 spans three or more orders of magnitude across backends: a log axis, in µs.
    let micros = |d: Duration| (d.as_secs_f64() * 1e6).max(1.0);
    let low = rows
        .iter()
        .map(|r| micros(r.p99))
        .fold(f64::INFINITY, f64::min)
        .log10()
        .floor()
        .min(2.0);
    let high = rows
        .iter()
        .map(|r| micros(r.p99))
        .fold(1.0, f64::max)
        .log10()
        .ceil()
        .max(low + 1.0);
    let log = move |v: f64| (v.max(1.0).log10() - low) / (high - low);
    let latency_ticks = (low as i32..=high as i32)
        .map(|e| {
            let v = 10f64.powi(e);
            (v, format_decade(v))
        })
        .collect();
    plot.panel(
        &Panel {
            title: "p99 latency (lower is better; log scale)",
            top: 440.0,
            height: 250.0,
            scale: &log,
            ticks: latency_ticks,
            value: &|r| micros(r.p99),
            label: &|r| format_latency(r.p99),
        },
        rows,
        backends,
        workloads,
    );
    plot.svg.push_str("</svg>\n");
    plot.svg
}

fn gcd(a: usize, b: usize) -> usize {
    if b == 0 {
        a
    } else {
        gcd(b, a % b)
    }
}

fn runtime(threads: usize, name: &str) -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn main() -> ExitCode {
    let options = match Options::parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(error) => {
            if !error.is_empty() {
                eprintln!("error: {error}\n");
            }
            eprint!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mut notes = Vec::new();
    let wants_redis = options.backends.iter().any(|b| b.needs_redis());
    let redis = (wants_redis && redis_server::available()).then(RedisServer::start);
    if wants_redis && redis.is_none() {
        notes.push("redis-server is not installed: the redis and tiered rows were skipped.".to_owned());
    }
    let backends: Vec<Backend> = options
        .backends
        .iter()
        .copied()
        .filter(|b| !b.needs_redis() || redis.is_some())
        .collect();

    let server = runtime(options.server_threads, "loadtest-server");
    let client = runtime(options.client_threads, "loadtest-client");
    let bench = Bench {
        server: &server,
        client: &client,
        redis: redis.as_ref(),
        options: &options,
    };
    let peak_reset = reset_peak_rss();
    let our_pids: Vec<u32> = redis.as_ref().and_then(RedisServer::pid).into_iter().collect();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (started, cpu_before) = (Instant::now(), CpuTicks::now(&our_pids));
    // Workload by workload, so that the rows compared with each other run close in time.
    let scenarios: Vec<(Backend, Workload)> = options
        .workloads
        .iter()
        .flat_map(|w| backends.iter().map(move |b| (*b, *w)))
        .collect();
    let estimate = (options.duration + options.warmup) * (scenarios.len() * options.rounds) as u32;
    eprintln!(
        "{} scenarios x {} rounds, about {:.0} s",
        scenarios.len(),
        options.rounds,
        estimate.as_secs_f64().ceil()
    );
    let mut runs: Vec<Vec<Row>> = scenarios.iter().map(|_| Vec::new()).collect();
    let mut index = 0;
    for round in 0..options.rounds {
        // Each round runs a workload's backends in another order (stepping through them by a
        // stride coprime with their number), so that no backend always follows the same one:
        // the one before can leave the machine warmer or busier.
        let n = backends.len();
        let strides: Vec<usize> = (1..n.max(2)).filter(|k| gcd(*k, n) == 1).collect();
        let stride = strides[round % strides.len()];
        let order = (0..scenarios.len()).map(|i| {
            let (group, position) = (i / n, i % n);
            group * n + (round + position * stride) % n
        });
        for i in order {
            let (backend, workload) = scenarios[i];
            let row = bench.scenario(backend, workload, index);
            index += 1;
            let line = table(std::slice::from_ref(&row));
            eprintln!("round {}: {}", round + 1, line.lines().nth(2).unwrap_or_default());
            runs[i].push(row);
            if let Some(redis) = &redis {
                redis.cli(&["flushall"]);
            }
        }
    }
    let background_cpu = cpu_before
        .zip(CpuTicks::now(&our_pids))
        .and_then(|(before, after)| before.background_shares(after, started.elapsed(), cores));
    let ratio_text = ratios(&scenarios, &runs);
    let errors: u64 = runs.iter().flatten().map(|r| r.errors).sum();
    let rows: Vec<Row> = runs.into_iter().map(median_run).collect();
    print!("{}", table(&rows));

    let subtitle = format!(
        "{} ({} cores); {} connections, {} per scenario, median of {} round{}; stampede bursts of {}; \
         1 KiB bodies; origin handler 2 ms",
        cpu_model(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        options.concurrency,
        format_latency(options.duration),
        options.rounds,
        if options.rounds == 1 { "" } else { "s" },
        options.burst,
    );
    let info = RunInfo {
        notes: &notes,
        peak_reset,
        background_cpu,
        ratios: ratio_text,
        errors,
    };
    let report = markdown(&rows, &options, &info);
    let plot = svg(&rows, &backends, &options.workloads, &subtitle);
    let written = std::fs::create_dir_all(&options.out)
        .and_then(|()| std::fs::write(options.out.join("loadtest.md"), &report))
        .and_then(|()| std::fs::write(options.out.join("loadtest.svg"), &plot));
    if let Err(error) = written {
        eprintln!("error: cannot write to {}: {error}", options.out.display());
        return ExitCode::FAILURE;
    }
    println!();
    print!("{}", info.ratios);
    println!("during the run, {}", background_text(info.background_cpu));
    for note in &notes {
        println!("note: {note}");
    }
    eprintln!(
        "wrote {} and {}",
        options.out.join("loadtest.md").display(),
        options.out.join("loadtest.svg").display()
    );
    if errors > 0 {
        eprintln!("warning: {errors} requests failed or timed out");
    }
    ExitCode::SUCCESS
}
