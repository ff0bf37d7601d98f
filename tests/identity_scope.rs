//! Per-identity scope is chosen by the response: an explicitly shareable answer to a signed-in
//! request is one entry for everyone; anything else (and `private` always) is stored for that
//! identity alone. Requests with credentials but no identity never get a per-identity entry,
//! and no answer computed for one identity reaches another unless the origin shared it.

mod common;

#[path = "common/rng.rs"]
mod rng;

use axum::extract::Request;
use axum::response::IntoResponse;
use axum::{Extension, Router};
use common::*;
use http::header::{CACHE_CONTROL, VARY};
use rng::Rng;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;
use tower_response_cache::{CacheLayer, CacheTags, MemoryStore, RouteOverride, Store};

/// The identity comes from `x-user`; `cookie` is a credential.
fn layer(store: MemoryStore) -> CacheLayer<MemoryStore> {
    CacheLayer::builder(store)
        .vary_by_identity(|parts| parts.headers.get("x-user")?.to_str().ok().map(str::to_owned))
        .build()
}

/// Who the origin computed an answer for: the user, `cred:<cookie>` for credentials without
/// an identity, or `anon`.
fn owner(request: &Request) -> String {
    let header = |name: &str| request.headers().get(name).and_then(|v| v.to_str().ok());
    match (header("x-user"), header("cookie")) {
        (Some(user), _) => user.to_string(),
        (None, Some(cookie)) => format!("cred:{cookie}"),
        (None, None) => "anon".to_string(),
    }
}

/// Pages by kind: `/public/n`, `/smaxage/n`, `/private/n`, `/plain/n`, `/vary/n`, and
/// `/mixed/n` (public to anonymous requests, private to signed-in ones). The body says whom
/// it was computed for and how the origin marked it.
fn page(request: Request) -> axum::response::Response {
    let owner = owner(&request);
    let path = request.uri().path().to_string();
    let kind = path.split('/').nth(1).unwrap_or("").to_string();
    let signed_in = request.headers().contains_key("x-user");
    let (cc, shared) = match kind.as_str() {
        "public" => ("public, max-age=60", true),
        "smaxage" => ("s-maxage=60", true),
        "private" => ("private, max-age=60", false),
        "mixed" if signed_in => ("private, max-age=60", false),
        "mixed" => ("public, max-age=60", true),
        _ => ("max-age=60", false),
    };
    let mut response = (
        [(CACHE_CONTROL, cc)],
        Extension(CacheTags::new([format!("page:{path}")])),
        format!("{owner}|{}", if shared { "shared" } else { "own" }),
    )
        .into_response();
    if kind == "vary" {
        response.headers_mut().insert(VARY, "accept".parse().unwrap());
    }
    response
}

fn user(name: &str) -> Vec<(&'static str, String)> {
    vec![("x-user", name.to_string()), ("cookie", format!("sid={name}"))]
}

async fn body_of(app: &Router, uri: &str, headers: &[(&'static str, String)]) -> String {
    let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
    let response = send(app, get_with(uri, &headers)).await;
    text(response).await
}

#[tokio::test]
async fn a_public_page_is_one_entry_for_every_identity_and_for_anonymous_requests() {
    let origin = Origin::new();
    let app = origin.app(layer(MemoryStore::new()), page);
    for name in ["alice", "bob", "carol"] {
        body_of(&app, "/public/1", &user(name)).await;
    }
    assert_eq!(origin.calls(), 1, "3 users x a public page = 1 origin call");
    assert_eq!(body_of(&app, "/public/1", &[]).await, "alice|shared");
    assert_eq!(origin.calls(), 1, "found by anonymous requests too");
}

#[tokio::test]
async fn a_private_page_is_stored_per_identity() {
    let origin = Origin::new();
    let app = origin.app(layer(MemoryStore::new()), page);
    for name in ["alice", "bob", "carol"] {
        assert_eq!(body_of(&app, "/private/1", &user(name)).await, format!("{name}|own"));
    }
    assert_eq!(origin.calls(), 3, "3 users x a private page = 3 origin calls");
    for name in ["alice", "bob", "carol"] {
        assert_eq!(body_of(&app, "/private/1", &user(name)).await, format!("{name}|own"));
    }
    assert_eq!(origin.calls(), 3, "each from their own entry");
    // Anonymous requests and credentials without an identity find none of them.
    assert_eq!(body_of(&app, "/private/1", &[]).await, "anon|own");
    let cookie_only = [("cookie", "sid=alice".to_string())];
    assert_eq!(body_of(&app, "/private/1", &cookie_only).await, "cred:sid=alice|own");
    assert_eq!(origin.calls(), 5);
}

#[tokio::test]
async fn an_answer_without_explicit_sharing_is_per_identity_and_never_served_to_anonymous_requests() {
    let origin = Origin::new();
    let app = origin.app(layer(MemoryStore::new()), page);
    assert_eq!(body_of(&app, "/plain/1", &user("alice")).await, "alice|own");
    assert_eq!(body_of(&app, "/plain/1", &user("alice")).await, "alice|own");
    assert_eq!(origin.calls(), 1);
    assert_eq!(body_of(&app, "/plain/1", &[]).await, "anon|own");
    assert_eq!(body_of(&app, "/plain/1", &user("bob")).await, "bob|own");
    assert_eq!(origin.calls(), 3);
}

#[tokio::test]
async fn credentials_without_an_identity_never_get_a_per_identity_entry() {
    let origin = Origin::new();
    let store = MemoryStore::new();
    let app = origin.app(layer(store.clone()), page);
    let cookie_only = [("cookie", "sid=zed".to_string())];
    for _ in 0..2 {
        assert_eq!(body_of(&app, "/plain/1", &cookie_only).await, "cred:sid=zed|own");
        assert_eq!(body_of(&app, "/private/1", &cookie_only).await, "cred:sid=zed|own");
    }
    assert_eq!(origin.calls(), 4, "nothing was stored for them");
    assert_eq!(store.stats().entries, 0);
}

#[tokio::test]
async fn a_route_forces_either_scope() {
    let origin = Origin::new();
    let layer = CacheLayer::builder(MemoryStore::new())
        .vary_by_identity(|parts| parts.headers.get("x-user")?.to_str().ok().map(str::to_owned))
        .route_override(|parts| match parts.uri.path() {
            "/public/personal" => Some(RouteOverride::PerIdentity),
            "/plain/same" => Some(RouteOverride::Shared),
            _ => None,
        })
        .build();
    let app = origin.app(layer, page);
    for name in ["alice", "bob"] {
        assert_eq!(
            body_of(&app, "/public/personal", &user(name)).await,
            format!("{name}|shared")
        );
    }
    assert_eq!(origin.calls(), 2, "public, but stored per identity");
    for name in ["alice", "bob", "carol"] {
        body_of(&app, "/plain/same", &user(name)).await;
    }
    assert_eq!(
        origin.calls(),
        3,
        "not marked shareable, but the route says it is the same for all"
    );
}

/// What a response may be, given who asked: an answer computed for someone else is allowed
/// only if the origin shared it.
fn verdict(requester: &str, body: &str) -> Result<(), String> {
    let (computed_for, marking) = body.split_once('|').ok_or_else(|| format!("malformed body {body}"))?;
    if computed_for == requester || marking == "shared" {
        Ok(())
    } else {
        Err(format!("{requester} got {body}"))
    }
}

/// 200,000 requests from 4 users, anonymous clients and clients with credentials but no
/// identity, over pages of every kind, with concurrent misses (origin answers take a moment)
/// and purges: no answer computed for one requester reaches another unless it was shared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_answer_crosses_identities_in_a_randomized_mix() {
    const CLIENTS: u64 = 16;
    const REQUESTS: u64 = 200_000;
    const KINDS: [&str; 6] = ["public", "smaxage", "private", "plain", "vary", "mixed"];
    let store = MemoryStore::new();
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = calls.clone();
    let app = Router::new()
        .route(
            "/{*path}",
            axum::routing::get(move |request: Request| {
                let calls = counted.clone();
                async move {
                    let n = calls.fetch_add(1, SeqCst);
                    // Some answers take a while, so that misses overlap and coalesce.
                    if n % 3 == 0 {
                        tokio::time::sleep(Duration::from_micros(200)).await;
                    }
                    page(request)
                }
            }),
        )
        .layer(layer(store.clone()));
    let violations = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let served = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let (app, store, violations, served) = (app.clone(), store.clone(), violations.clone(), served.clone());
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng(0x5eed_1d00 ^ (client + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
            for _ in 0..REQUESTS / CLIENTS {
                let uri = format!("/{}/{}", KINDS[rng.below(KINDS.len() as u64) as usize], rng.below(8));
                if rng.below(200) == 0 {
                    store
                        .purge(&[format!("page:{uri}")], tower_response_cache::PurgeMode::Hard)
                        .await
                        .unwrap();
                }
                let mut headers: Vec<(&'static str, String)> = match rng.below(6) {
                    0..=2 => user(["alice", "bob", "carol", "dave"][rng.below(4) as usize]),
                    3 => vec![("cookie", format!("sid=z{}", rng.below(3)))],
                    _ => Vec::new(),
                };
                if rng.below(2) == 0 {
                    headers.push(("accept", "text/html".to_string()));
                }
                let requester = {
                    let header = |name: &str| headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.clone());
                    match (header("x-user"), header("cookie")) {
                        (Some(user), _) => user,
                        (None, Some(cookie)) => format!("cred:{cookie}"),
                        (None, None) => "anon".to_string(),
                    }
                };
                let body = body_of(&app, &uri, &headers).await;
                served.fetch_add(1, SeqCst);
                if let Err(violation) = verdict(&requester, &body) {
                    let mut violations = violations.lock().unwrap();
                    if violations.len() < 10 {
                        violations.push(format!("{uri}: {violation}"));
                    }
                }
            }
        }));
    }
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(600), task)
            .await
            .expect("the mix finished")
            .unwrap();
    }
    let origin_calls = calls.load(SeqCst);
    eprintln!(
        "{} requests, {origin_calls} origin calls, violations: {:?}",
        served.load(SeqCst),
        violations.lock().unwrap()
    );
    assert_eq!(served.load(SeqCst) as u64, REQUESTS);
    assert!(violations.lock().unwrap().is_empty(), "answers crossed identities");
    assert!(
        (origin_calls as u64) < REQUESTS / 2,
        "the mix must exercise hits, not only misses: {origin_calls} calls"
    );
}
