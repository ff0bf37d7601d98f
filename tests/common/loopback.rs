//! A real HTTP/1.1 server on a loopback port, and a client connection the test can drop
//! mid-request. Test files include it with `#[path = "common/loopback.rs"] mod loopback;`.

// Each test file uses its own subset of these helpers.
#![allow(dead_code)]

use bytes::Bytes;
use http_body_util::Empty;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The longest any network step may take; past it the test has hung.
pub const NETWORK_WAIT: Duration = Duration::from_secs(5);

/// Waits for `future`, failing the test past [`NETWORK_WAIT`].
pub async fn within<F: Future>(future: F) -> F::Output {
    tokio::time::timeout(NETWORK_WAIT, future)
        .await
        .expect("the network answered in time")
}

/// Serves `app` on 127.0.0.1 with a free port; the server ends when the handle is aborted.
pub async fn serve(app: axum::Router) -> (SocketAddr, JoinHandle<()>) {
    let listener = within(TcpListener::bind("127.0.0.1:0")).await.expect("a loopback port");
    let addr = listener.local_addr().expect("bound address");
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.expect("the server runs");
    });
    (addr, server)
}

/// One client connection of its own, so that dropping it closes the socket.
pub struct Connection {
    pub sender: http1::SendRequest<Empty<Bytes>>,
    driver: JoinHandle<()>,
}

impl Connection {
    /// Connects to `addr` and performs the HTTP/1.1 handshake.
    pub async fn open(addr: SocketAddr) -> Self {
        let stream = within(TcpStream::connect(addr)).await.expect("connected");
        let (sender, connection) = within(http1::handshake(TokioIo::new(stream))).await.expect("handshake");
        let driver = tokio::spawn(async move {
            // The server closing or the test dropping the connection both end it.
            let _ = connection.await;
        });
        Connection { sender, driver }
    }

    /// Closes the socket at once, whatever is in flight, as a client that goes away does.
    pub async fn close(self) {
        drop(self.sender);
        self.driver.abort();
        // Awaited so that the socket is closed when this returns.
        let _ = within(self.driver).await;
    }
}

/// A bodiless request for `path` with a `host` header, as a client sends it.
pub fn request(method: http::Method, path: &str) -> http::Request<Empty<Bytes>> {
    http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "shop.test")
        .body(Empty::new())
        .expect("valid request")
}

/// A TCP proxy on a loopback port that forwards to `upstream` and holds each chunk of the
/// upstream's replies back by `delay`: a slow link, whose round trips a test can act within.
/// It stops accepting when dropped; open links end when either side closes.
pub struct SlowLink {
    pub addr: SocketAddr,
    acceptor: JoinHandle<()>,
}

impl SlowLink {
    pub async fn start(upstream: SocketAddr, delay: Duration) -> Self {
        let listener = within(TcpListener::bind("127.0.0.1:0")).await.expect("a loopback port");
        let addr = listener.local_addr().expect("bound address");
        let acceptor = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(Ok(server)) = tokio::time::timeout(NETWORK_WAIT, TcpStream::connect(upstream)).await else {
                        return;
                    };
                    let (client_read, client_write) = client.into_split();
                    let (server_read, server_write) = server.into_split();
                    tokio::join!(
                        forward(client_read, server_write, Duration::ZERO),
                        forward(server_read, client_write, delay),
                    );
                });
            }
        });
        SlowLink { addr, acceptor }
    }
}

impl Drop for SlowLink {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

/// Copies `from` to `to`, each chunk `delay` after it was read, until either side closes.
async fn forward(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, delay: Duration) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buffer = vec![0; 16 * 1024];
    loop {
        let n = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        if to.write_all(&buffer[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}
