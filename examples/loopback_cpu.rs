//! Loopback CPU: the server's CPU time per request, the Router alone (`floor`) against the
//! same Router with the cache (`hit`), over real TCP on 127.0.0.1.
//!
//! Run: `cargo run --release --example loopback_cpu` (about 20 seconds; options:
//! `--requests 20000` per round, `--rounds 3`, `--connections 4`).
//!
//! The server is `axum::serve` on a current-thread runtime, so that every byte of its work
//! runs on one thread; the client (hyper's HTTP/1 client over keep-alive connections) runs on
//! another. Requests per second on two cores says more about the client than the server, so
//! the figure is the server thread's CPU time per request, read from the kernel's account of
//! that thread (`/proc/self/task/<tid>/schedstat`, nanoseconds on CPU; the coarser `stat`
//! ticks where schedstat is missing). The workload is `examples/support/item_router.rs`'s:
//! `GET /item/{id}`, 1 KiB of JSON, keys drawn uniformly from 1 and from 10,000, every key
//! requested once before the measured requests (so that with the cache they all hit). Floor
//! and hit rounds alternate; the table shows each one's median round and the ratio.

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

#[path = "support/item_router.rs"]
mod item_router;
use item_router::SplitMix64;

struct Options {
    requests: u64,
    rounds: usize,
    connections: u64,
}

/// A server running on its own thread, and how to read that thread's CPU time.
struct Server {
    addr: SocketAddr,
    tid: String,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Server {
    fn start(cached: bool) -> Server {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let tid = std::fs::read_link("/proc/thread-self")
                .ok()
                .and_then(|link| link.file_name().map(|n| n.to_string_lossy().into_owned()))
                .expect("/proc/thread-self names this thread");
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime");
            runtime.block_on(async move {
                let listener = TcpListener::bind("127.0.0.1:0").await.expect("a loopback port");
                let (router, layer) = item_router::app(cached);
                ready_tx.send((listener.local_addr().unwrap(), tid)).unwrap();
                axum::serve(listener, router)
                    .with_graceful_shutdown(async {
                        let _ = stopped.await;
                    })
                    .await
                    .expect("the server runs");
                layer.map_or(0, |layer| layer.stats().misses)
            })
        });
        let (addr, tid) = ready_rx.recv().expect("the server starts");
        Server {
            addr,
            tid,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Nanoseconds the server thread has spent on a CPU so far.
    fn cpu_ns(&self) -> u64 {
        let task = format!("/proc/self/task/{}", self.tid);
        if let Some(ns) = std::fs::read_to_string(format!("{task}/schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse().ok())
        {
            return ns;
        }
        // utime and stime, fields 14 and 15, in ticks of 1/100 s (after the `(comm)` field).
        let stat = std::fs::read_to_string(format!("{task}/stat")).expect("the thread's stat");
        let after = &stat[stat.rfind(')').expect("stat has (comm)") + 2..];
        let fields: Vec<u64> = after.split(' ').skip(11).take(2).map(|f| f.parse().unwrap()).collect();
        (fields[0] + fields[1]) * 10_000_000
    }

    /// Stops the server; returns the cache's misses (0 for the floor).
    fn stop(mut self) -> u64 {
        let _ = self.stop.take().unwrap().send(());
        self.thread.take().unwrap().join().expect("the server thread")
    }
}

/// One connection, one request for every key in turn.
async fn warm(addr: SocketAddr, uris: &[Uri]) {
    let mut sender = connect(addr).await;
    for uri in uris {
        get(&mut sender, uri.clone()).await;
    }
}

async fn connect(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Empty<Bytes>> {
    let stream = TcpStream::connect(addr).await.expect("connects");
    stream.set_nodelay(true).unwrap();
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(connection);
    sender
}

async fn get(sender: &mut hyper::client::conn::http1::SendRequest<Empty<Bytes>>, uri: Uri) {
    let request = Request::get(uri)
        .header("host", "localhost")
        .body(Empty::new())
        .unwrap();
    sender.ready().await.expect("connection ready");
    let response = sender.send_request(request).await.expect("a response");
    assert_eq!(response.status(), StatusCode::OK);
    let body = response.into_body().collect().await.expect("the body").to_bytes();
    assert_eq!(body.len(), 1024);
}

/// `requests` GETs spread over `connections` keep-alive connections, keys drawn uniformly.
async fn drive(addr: SocketAddr, uris: &[Uri], requests: u64, connections: u64, seed: u64) {
    let mut tasks = Vec::new();
    for c in 0..connections {
        let uris = uris.to_vec();
        let share = requests / connections + u64::from(c < requests % connections);
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(addr).await;
            let mut rng = SplitMix64(seed ^ (c + 1).wrapping_mul(0x9E37_79B9));
            for _ in 0..share {
                let uri = uris[(rng.next_u64() % uris.len() as u64) as usize].clone();
                get(&mut sender, uri).await;
            }
        }));
    }
    for task in tasks {
        task.await.expect("a client task");
    }
}

/// Server CPU nanoseconds per request of each round, floor and hit alternating.
fn measure(options: &Options, keys: u64, client: &tokio::runtime::Runtime) -> (Vec<f64>, Vec<f64>) {
    let uris = item_router::uris(keys);
    let (mut floor, mut hit) = (Vec::new(), Vec::new());
    for round in 0..options.rounds {
        for cached in [false, true] {
            let server = Server::start(cached);
            // Every key once (all later requests hit), then some more to warm the connection path.
            client.block_on(async {
                warm(server.addr, &uris).await;
                drive(server.addr, &uris, 2000, options.connections, 7).await;
            });
            let before = server.cpu_ns();
            client.block_on(drive(
                server.addr,
                &uris,
                options.requests,
                options.connections,
                round as u64 + 1,
            ));
            let spent = server.cpu_ns() - before;
            let misses = server.stop();
            if cached {
                assert_eq!(misses, keys, "only the warm-up may miss");
            }
            let per_request = spent as f64 / options.requests as f64;
            if cached { &mut hit } else { &mut floor }.push(per_request);
        }
    }
    (floor, hit)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() -> ExitCode {
    let mut options = Options {
        requests: 20_000,
        rounds: 3,
        connections: 4,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().and_then(|v| v.parse::<u64>().ok()).filter(|n| *n > 0);
        match (flag.as_str(), value) {
            ("--requests", Some(n)) => options.requests = n,
            ("--rounds", Some(n)) => options.rounds = n as usize,
            ("--connections", Some(n)) => options.connections = n,
            _ => {
                eprintln!("usage: loopback_cpu [--requests N] [--rounds N] [--connections N]");
                return ExitCode::from(2);
            }
        }
    }
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    println!("| keys | floor (server CPU µs/request) | hit (server CPU µs/request) | hit / floor |");
    println!("|---:|---:|---:|---:|");
    for keys in [1, 10_000] {
        let (mut floor, mut hit) = measure(&options, keys, &client);
        let (floor, hit) = (median(&mut floor), median(&mut hit));
        println!(
            "| {keys} | {:.2} | {:.2} | {:.3}x |",
            floor / 1000.0,
            hit / 1000.0,
            hit / floor
        );
    }
    // Let the client's connection tasks finish before the runtime goes.
    client.block_on(async { tokio::time::sleep(Duration::from_millis(10)).await });
    ExitCode::SUCCESS
}
