//! The cache's metrics served to Prometheus, through the `metrics` feature.
//!
//! ```text
//! cargo run --example prometheus --features metrics [-- 127.0.0.1:PORT]
//! ```
//!
//! serves a small cached book service on a loopback port (3000 unless given), and its metrics
//! on `/metrics` in the Prometheus text format. Try:
//!
//! ```text
//! curl -i localhost:3000/books/1              # a miss, stored
//! curl -i localhost:3000/books/1              # a hit
//! curl -i -X POST localhost:3000/books/1      # a bypass (method), and a purge
//! curl -i localhost:3000/account              # a miss, not stored (no-store)
//! curl localhost:3000/metrics | grep tower_response_cache
//! ```

#[path = "prometheus/app.rs"]
mod app;

use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = match std::env::args().nth(1) {
        Some(addr) => addr.parse()?,
        None => SocketAddr::from(([127, 0, 0, 1], 3000)),
    };
    let handle = app::install_recorder()?;
    // `install_recorder` starts no upkeep task: histogram samples would pile up between
    // scrapes unless drained regularly.
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    let listener = TcpListener::bind(addr).await?;
    println!(
        "serving http://{}/books/1 and http://{0}/metrics",
        listener.local_addr()?
    );
    axum::serve(listener, app::app(handle)).await?;
    Ok(())
}
