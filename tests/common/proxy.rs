//! A loopback TCP proxy the tests put between a client and a server, and switch to
//! black-hole a link (connections stay open, nothing is forwarded, as after a NAT device
//! dropped the flow) and heal it again.
//!
//! Include with `#[path = "common/proxy.rs"] mod proxy;`.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Forward,
    BlackHole,
}

/// The proxy; it stops accepting when dropped.
pub struct Proxy {
    pub addr: SocketAddr,
    mode: watch::Sender<Mode>,
    accept: tokio::task::JoinHandle<()>,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.accept.abort();
    }
}

impl Proxy {
    /// Listens on a free loopback port and forwards every connection to `upstream`.
    pub async fn start(upstream: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let (mode, _) = watch::channel(Mode::Forward);
        let modes = mode.clone();
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let modes = modes.subscribe();
                tokio::spawn(async move {
                    let Ok(Ok(server)) =
                        tokio::time::timeout(std::time::Duration::from_secs(2), TcpStream::connect(upstream)).await
                    else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let dead = Arc::new(AtomicBool::new(false));
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::spawn(pump(client_read, server_write, modes.clone(), dead.clone()));
                    tokio::spawn(pump(server_read, client_write, modes, dead));
                });
            }
        });
        Proxy { addr, mode, accept }
    }

    pub fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    /// Every connection, open or new, stops forwarding: bytes are read and dropped.
    pub fn black_hole(&self) {
        self.mode.send_replace(Mode::BlackHole);
    }

    /// Forwards again. A connection that lost bytes is closed (as a NAT device answers a flow
    /// it forgot with a reset); the others carry on.
    pub fn heal(&self) {
        self.mode.send_replace(Mode::Forward);
    }
}

/// Copies one direction. Once a connection has dropped bytes it never forwards again.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut mode: watch::Receiver<Mode>, dead: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 16 << 10];
    loop {
        tokio::select! {
            read = from.read(&mut buf) => {
                let n = match read {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                if *mode.borrow() == Mode::BlackHole || dead.load(SeqCst) {
                    dead.store(true, SeqCst);
                    continue;
                }
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            changed = mode.changed() => {
                if changed.is_err() || (*mode.borrow() == Mode::Forward && dead.load(SeqCst)) {
                    return;
                }
            }
        }
    }
}
