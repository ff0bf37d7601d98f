//! RedisStore on clients the application built (`builder_with_client`,
//! `cluster_builder_with_client`) and, with `redis-tls`, over TLS, against real `redis-server`
//! processes on free loopback ports.
#![cfg(feature = "redis")]

#[path = "../examples/support/redis_server.rs"]
mod redis_server;

use axum::extract::State;
use axum::http::{Request, StatusCode};
use axum::routing::get;
use axum::{Extension, Router};
use http_body_util::BodyExt;
use redis_server::RedisServer;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;
use tower_response_cache::store::RedisStore;
use tower_response_cache::{CacheLayer, CacheTags, Invalidate, InvalidateLayer, Store};

static NAMESPACE: AtomicUsize = AtomicUsize::new(0);

fn fresh_namespace() -> String {
    format!("client{}", NAMESPACE.fetch_add(1, SeqCst))
}

/// `GET /page` answers the number of origin calls so far, tagged `page`; `POST /page` purges it.
fn app<S: Store>(store: S, calls: Arc<AtomicUsize>) -> Router {
    let read = move |State(calls): State<Arc<AtomicUsize>>| async move {
        let call = calls.fetch_add(1, SeqCst) + 1;
        (Extension(CacheTags::new(["page"])), format!("call {call}"))
    };
    let write = || async { (StatusCode::CREATED, Extension(Invalidate::tags(["page"]))) };
    Router::new()
        .route("/page", get(read).post(write))
        .with_state(calls)
        .layer(InvalidateLayer::new(store.clone()))
        .layer(CacheLayer::new(store))
}

async fn send(app: &Router, method: &str) -> String {
    let request = Request::builder()
        .method(method)
        .uri("/page")
        .body(axum::body::Body::empty())
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), app.clone().oneshot(request))
        .await
        .expect("answered within 10 s")
        .unwrap();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(body.to_vec()).unwrap()
}

/// A miss, a hit, a purge, a miss: the store works through `store`.
async fn serves_and_purges<S: Store>(store: S) {
    let app = app(store, Arc::new(AtomicUsize::new(0)));
    assert_eq!(send(&app, "GET").await, "call 1");
    assert_eq!(send(&app, "GET").await, "call 1", "a hit from Redis");
    send(&app, "POST").await;
    assert_eq!(send(&app, "GET").await, "call 2", "the purge reached Redis");
}

async fn connect(builder: tower_response_cache::store::RedisStoreBuilder) -> RedisStore {
    tokio::time::timeout(
        Duration::from_secs(10),
        builder
            .namespace(fresh_namespace())
            .clock_skew_margin(Duration::ZERO)
            .connect(),
    )
    .await
    .expect("connected within 10 s")
    .expect("connect")
}

#[tokio::test]
async fn a_store_on_the_applications_client_uses_that_client() {
    if !redis_server::available() {
        return;
    }
    let server = RedisServer::start();
    // Database 3: what only this client, not a default connection, would pick.
    let client = redis::Client::open(format!("{}/3", server.url())).unwrap();
    serves_and_purges(connect(RedisStore::builder_with_client(client)).await).await;
    let keys = |db: &str| server.cli(&["-n", db, "dbsize"]).trim().parse::<u64>().unwrap();
    assert!(keys("3") > 0, "the entry and its records are in the client's database");
    assert_eq!(keys("0"), 0, "nothing in the default database");
}

#[cfg(feature = "test-util")]
#[tokio::test]
async fn stores_on_the_applications_clients_pass_the_conformance_suite() {
    use tower_response_cache::store::{conformance, TieredStore};
    use tower_response_cache::MemoryStore;
    if !redis_server::available() {
        return;
    }
    let server = RedisServer::start();
    let client = redis::Client::open(server.url()).unwrap();
    conformance::run(|| connect(RedisStore::builder_with_client(client.clone()))).await;
    // The tiered store subscribes to purges through the same client.
    conformance::run(|| async {
        let redis = connect(RedisStore::builder_with_client(client.clone())).await;
        TieredStore::new(MemoryStore::new(), redis)
    })
    .await;

    let cluster = redis_server::RedisCluster::start();
    let urls = cluster.urls();
    conformance::run(|| async {
        let nodes = redis::cluster::ClusterClient::new(urls.clone()).unwrap();
        let node = redis::Client::open(urls[0].as_str()).unwrap();
        connect(RedisStore::cluster_builder_with_client(nodes, node)).await
    })
    .await;
    // Sharded pub/sub builds a cluster client of its own: refused rather than half-configured.
    let nodes = redis::cluster::ClusterClient::new(urls.clone()).unwrap();
    let node = redis::Client::open(urls[0].as_str()).unwrap();
    let refused = RedisStore::cluster_builder_with_client(nodes, node)
        .sharded_pubsub(true)
        .connect()
        .await;
    let error = refused.expect_err("sharded_pubsub with a client you built is refused");
    assert!(error.to_string().contains("sharded_pubsub"), "{error}");
}

#[cfg(feature = "redis-tls")]
mod tls {
    use super::*;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// A CA and a certificate for 127.0.0.1 signed by it, made with the `openssl` tool, in a
    /// directory of their own; `None` (the test skips) where `openssl` is not installed and
    /// `REQUIRE_REDIS` is not set.
    fn certificates() -> Option<PathBuf> {
        if Command::new("openssl").arg("version").output().is_err() {
            assert!(
                std::env::var("REQUIRE_REDIS").as_deref() != Ok("1"),
                "REQUIRE_REDIS=1 but openssl is not installed"
            );
            eprintln!("SKIPPED: openssl is not installed, so no certificates for the TLS test");
            return None;
        }
        let dir = std::env::temp_dir().join(format!("trc-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        let run = |args: &[&str]| {
            let out = Command::new("openssl").args(args).current_dir(&dir).output().unwrap();
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-days",
                "1",
                "-subj",
                "/CN=trc test CA",
            ],
        ]
        .concat());
        run(&[
            &["req"][..],
            &ec,
            &["-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"],
        ]
        .concat());
        std::fs::write(dir.join("san.ext"), "subjectAltName=IP:127.0.0.1\n").unwrap();
        run(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "1",
            "-extfile",
            "san.ext",
        ]);
        Some(dir)
    }

    fn free_port() -> u16 {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn path(dir: &Path, file: &str) -> String {
        dir.join(file).to_str().unwrap().to_owned()
    }

    #[tokio::test]
    async fn a_store_over_tls_serves_and_purges() {
        if !redis_server::available() {
            return;
        }
        let Some(dir) = certificates() else { return };
        let tls_port = free_port();
        let server = RedisServer::start_with(&[
            "--tls-port",
            &tls_port.to_string(),
            "--tls-cert-file",
            &path(&dir, "server.crt"),
            "--tls-key-file",
            &path(&dir, "server.key"),
            "--tls-ca-cert-file",
            &path(&dir, "ca.crt"),
            "--tls-auth-clients",
            "no",
        ]);
        let tls_url = format!("rediss://127.0.0.1:{tls_port}");

        // The TLS port speaks nothing else: a plain connection to it gets no answer.
        let plain = redis::Client::open(format!("redis://127.0.0.1:{tls_port}")).unwrap();
        let plain = tokio::time::timeout(Duration::from_secs(2), async {
            let mut conn = plain.get_multiplexed_async_connection().await?;
            redis::cmd("PING").query_async::<String>(&mut conn).await
        })
        .await;
        assert!(
            !matches!(plain, Ok(Ok(_))),
            "plain text answered on the TLS port: {plain:?}"
        );

        // Without the test CA among the roots, the server's certificate is refused.
        let untrusted = RedisStore::builder(&tls_url)
            .namespace(fresh_namespace())
            .op_timeout(Duration::from_secs(2))
            .connect()
            .await
            .expect("a standalone store connects lazily");
        assert!(
            untrusted.purge_tags(["x"]).await.is_ok(),
            "a purge that cannot land is queued, not an error"
        );
        assert!(
            untrusted.stats().pending_purges > 0,
            "the purge could not land: {:?}",
            untrusted.stats()
        );

        let ca = std::fs::read(dir.join("ca.crt")).unwrap();
        let client = redis::Client::build_with_tls(
            tls_url.as_str(),
            redis::TlsCertificates {
                client_tls: None,
                root_cert: Some(ca),
            },
        )
        .unwrap();
        serves_and_purges(connect(RedisStore::builder_with_client(client)).await).await;
        drop(server);
        let _ = std::fs::remove_dir_all(dir);
    }
}
