//! Memory budget: writes ten times as many entries as a `MemoryStore`'s byte budget holds and
//! reports how much resident memory the process gained, against the budget.
//!
//! Run: `cargo run --release --example memory_budget`
//! (options: `--budget-mib 64`, `--factor 10`, `--entry-bytes 4096` (0 for empty bodies), and
//! `--max-overhead 25` to fail when resident growth exceeds the budget by more than 25%).
//!
//! Every request goes through `CacheLayer` (in process, no network) to a handler that answers a
//! fresh body of `--entry-bytes`, under a key of its own, so the store holds real, unshared
//! entries and evicts as it goes. It prints the store's accounting (which must stay within the
//! budget: the example fails otherwise), the growth of the process's resident memory (VmRSS,
//! and the peak VmHWM, from `/proc/self/status`) and the overhead: resident growth beyond the
//! budget, as a share of it. The overhead is what the store's weights (body, headers, key and
//! a fixed per-entry estimate) miss: allocator rounding and bookkeeping, hash tables, and
//! memory the allocator keeps after evictions.

use bytes::Bytes;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_TYPE};
use http::{Request, Response, Uri};
use http_body_util::{BodyExt, Empty, Full};
use std::convert::Infallible;
use std::future::ready;
use std::process::ExitCode;
use tower::{service_fn, Service, ServiceExt};
use tower_layer::Layer;
use tower_response_cache::{CacheLayer, MemoryStore};

const MIB: u64 = 1 << 20;

struct Options {
    budget: u64,
    factor: u64,
    entry_bytes: usize,
    max_overhead_percent: Option<u64>,
}

fn parse(args: impl IntoIterator<Item = String>) -> Result<Options, String> {
    let mut options = Options {
        budget: 64 * MIB,
        factor: 10,
        entry_bytes: 4096,
        max_overhead_percent: None,
    };
    let mut args = args.into_iter();
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = value
            .parse::<u64>()
            .ok()
            .filter(|n| *n > 0 || flag == "--entry-bytes")
            .ok_or_else(|| format!("{flag}: `{value}` is not a positive number"))?;
        match flag.as_str() {
            "--budget-mib" => options.budget = number * MIB,
            "--factor" => options.factor = number,
            "--entry-bytes" => options.entry_bytes = number as usize,
            "--max-overhead" => options.max_overhead_percent = Some(number),
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    Ok(options)
}

/// (VmRSS, VmHWM) of this process in bytes.
fn resident() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status (Linux only)");
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Requests `/items/{i}` and reads the whole body.
async fn fetch<S>(svc: &mut S, i: u64)
where
    S: Service<
        Request<Empty<Bytes>>,
        Response = Response<tower_response_cache::CacheBody<Full<Bytes>>>,
        Error = Infallible,
    >,
{
    // Built here rather than in advance, so that the baseline holds no URIs.
    let uri: Uri = format!("/items/{i}").parse().expect("uri");
    let mut request = Request::new(Empty::new());
    *request.uri_mut() = uri;
    let response = svc
        .ready()
        .await
        .expect("ready")
        .call(request)
        .await
        .expect("infallible");
    response.into_body().collect().await.expect("body");
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}

fn main() -> ExitCode {
    let options = match parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(error) => {
            eprintln!("error: {error}");
            eprintln!(
                "usage: cargo run --release --example memory_budget -- [--budget-mib 64] [--factor 10] \
                 [--entry-bytes 4096] [--max-overhead PERCENT]"
            );
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");

    let store = MemoryStore::builder().max_bytes(options.budget).build();
    let layer = CacheLayer::new(store.clone());
    let entry_bytes = options.entry_bytes;
    let mut svc = layer.layer(service_fn(move |_req: Request<Empty<Bytes>>| {
        // A fresh allocation per response, as a real handler would make.
        let mut response = Response::new(Full::new(Bytes::from(vec![b'x'; entry_bytes])));
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("public, max-age=3600"));
        ready(Ok::<_, Infallible>(response))
    }));

    // One entry first: `factor` times as many entries as the budget holds are written.
    runtime.block_on(fetch(&mut svc, 0));
    let requests = options.factor * options.budget / store.stats().bytes.max(1);

    // The baseline is taken once everything but the entries exists.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let (baseline, _) = resident();
    let mut max_sampled = baseline;
    let sample_every = (requests / 40).max(1);
    println!(
        "filling a {:.0} MiB MemoryStore with {requests} entries of {} bytes ({}x what it holds)",
        mib(options.budget),
        options.entry_bytes,
        options.factor
    );
    runtime.block_on(async {
        for i in 1..=requests {
            fetch(&mut svc, i).await;
            if i % sample_every == 0 {
                max_sampled = max_sampled.max(resident().0);
            }
        }
    });
    let (rss, hwm) = resident();
    let stats = store.stats();
    let layer_stats = layer.stats();

    let budget = options.budget;
    let growth = rss.saturating_sub(baseline);
    let peak_growth = hwm.max(max_sampled).saturating_sub(baseline);
    let overhead = |grown: u64| (grown as f64 - budget as f64) / budget as f64 * 100.0;
    println!();
    println!("| | |");
    println!("|---|---:|");
    println!("| budget (`max_bytes`) | {:.1} MiB |", mib(budget));
    println!(
        "| written | {} entries, {:.1} MiB of bodies |",
        layer_stats.stores,
        mib(layer_stats.stores * options.entry_bytes as u64)
    );
    println!(
        "| held (store's accounting) | {} entries, {:.1} MiB weighted ({:.0} bytes/entry) |",
        stats.entries,
        mib(stats.bytes),
        stats.bytes as f64 / stats.entries.max(1) as f64
    );
    println!("| evicted | {} entries |", stats.evictions);
    println!("| RSS before the fill | {:.1} MiB |", mib(baseline));
    println!(
        "| RSS growth after the fill | {:.1} MiB ({:.0} resident bytes/entry held) |",
        mib(growth),
        growth as f64 / stats.entries.max(1) as f64
    );
    println!("| peak RSS growth (VmHWM) | {:.1} MiB |", mib(peak_growth));
    println!(
        "| overhead beyond the budget, after the fill | {:+.1}% |",
        overhead(growth)
    );
    println!(
        "| overhead beyond the budget, at the peak | {:+.1}% |",
        overhead(peak_growth)
    );

    if stats.bytes > stats.max_bytes {
        eprintln!(
            "FAILED: the store holds {} bytes, over its budget of {}",
            stats.bytes, stats.max_bytes
        );
        return ExitCode::FAILURE;
    }
    if layer_stats.stores != requests + 1 {
        eprintln!(
            "FAILED: {} of {} responses were stored",
            layer_stats.stores,
            requests + 1
        );
        return ExitCode::FAILURE;
    }
    if let Some(limit) = options.max_overhead_percent {
        if overhead(peak_growth) > limit as f64 {
            eprintln!(
                "FAILED: resident growth exceeds the budget by {:.1}%, more than the {limit}% allowed",
                overhead(peak_growth)
            );
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
