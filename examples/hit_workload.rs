//! Hit workload: the same axum `Router` with and without the cache, for counting instructions.
//!
//! Run: `cargo run --release --example hit_workload -- hit --requests 100000 --keys 10000`
//! (`floor` instead of `hit` runs the Router without the cache). `benches/callgrind.sh` runs
//! it under callgrind at two request counts and prints instructions per request.
//!
//! One route, `GET /item/{id}`, answers 1 KiB of static JSON with `content-type`,
//! `cache-control: public, max-age=60` and `x-item-id`. With `hit`, `CacheLayer::new` over a
//! 256 MiB `MemoryStore` is applied with `Router::layer`, and every key is requested once
//! before the measured requests, so that all of these are hits. Requests go through
//! `ServiceExt::ready().call()` on a current-thread runtime and their bodies are collected;
//! keys are drawn uniformly with a fixed seed.

use std::process::ExitCode;

#[path = "support/item_router.rs"]
mod item_router;
use item_router::SplitMix64;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let (mut cached, mut requests, mut keys) = (None, 100_000u64, 1u64);
    while let Some(arg) = args.next() {
        let mut number = || args.next().and_then(|v| v.parse::<u64>().ok()).filter(|n| *n > 0);
        match arg.as_str() {
            "hit" => cached = Some(true),
            "floor" => cached = Some(false),
            "--requests" => requests = number().unwrap_or(0),
            "--keys" => keys = number().unwrap_or(0),
            _ => cached = None,
        }
    }
    let Some(cached) = cached.filter(|_| requests > 0 && keys > 0) else {
        eprintln!("usage: hit_workload (hit|floor) [--requests N] [--keys K]");
        return ExitCode::from(2);
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let (mut router, layer) = item_router::app(cached);
    let uris = item_router::uris(keys);
    let mut rng = SplitMix64(0x5EED);
    let bytes = runtime.block_on(async {
        // Every key once, so that the measured requests all hit (the floor does the same).
        for uri in &uris {
            item_router::fetch(&mut router, uri).await;
        }
        let mut bytes = 0;
        for _ in 0..requests {
            let uri = &uris[(rng.next_u64() % keys) as usize];
            bytes += item_router::fetch(&mut router, uri).await;
        }
        bytes
    });
    if bytes != requests as usize * 1024 {
        eprintln!("FAILED: {bytes} bytes for {requests} requests");
        return ExitCode::FAILURE;
    }
    if let Some(stats) = layer.map(|layer| layer.stats()) {
        if stats.misses != keys || stats.hits != requests {
            eprintln!("FAILED: not every measured request was a hit: {stats:?}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}
