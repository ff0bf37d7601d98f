//! An entry's tags shown to the CDN in front, on the responses made from it.

mod common;

use axum::extract::Request;
use axum::response::IntoResponse;
use axum::Extension;
use common::*;
use http::header::CACHE_CONTROL;
use tower_response_cache::{CacheLayer, CacheTags, CdnTags, MemoryStore};

fn tagged(request: Request) -> axum::response::Response {
    let cc = if request.uri().path() == "/me" {
        "private, max-age=60"
    } else {
        "public, max-age=60"
    };
    let tags = CacheTags::new(["book:1", "books", "has space", &"x".repeat(40)]);
    ([(CACHE_CONTROL, cc)], Extension(tags), "book").into_response()
}

#[tokio::test]
async fn misses_and_hits_carry_the_entrys_tags_in_the_cdns_header() {
    let origin = Origin::new();
    let layer = CacheLayer::builder(MemoryStore::new())
        .cdn_tags(CdnTags::surrogate_key().max_bytes(32))
        .build();
    let app = origin.app(layer.clone(), tagged);
    let miss = send(&app, get("/books/1")).await;
    assert_stored(&miss);
    let hit = send(&app, get("/books/1")).await;
    assert_hit(&hit);
    for response in [&miss, &hit] {
        // No path tag; the tag with a space and the one past 32 bytes left out.
        assert_eq!(header(response, "surrogate-key"), Some("book:1 books"));
    }
    assert_eq!(layer.stats().cdn_tags_dropped, 4, "2 tags left out, on each response");
    assert_eq!(origin.calls(), 1);
}

#[tokio::test]
async fn per_identity_entries_and_layers_without_the_setting_show_no_tags() {
    let origin = Origin::new();
    let layer = CacheLayer::builder(MemoryStore::new())
        .vary_by_identity(|parts| parts.headers.get("x-user")?.to_str().ok().map(str::to_owned))
        .cdn_tags(CdnTags::cache_tag())
        .build();
    let app = origin.app(layer, tagged);
    let mine = send(&app, get_with("/me", &[("x-user", "alice")])).await;
    assert_stored(&mine);
    assert_eq!(
        header(&mine, "cache-tag"),
        None,
        "a per-identity entry's tags stay inside"
    );
    let public = send(&app, get("/books/1")).await;
    assert!(header(&public, "cache-tag").is_some_and(|v| v.starts_with("book:1,books")));

    let plain = Origin::new().app(default_layer(), tagged);
    let response = send(&plain, get("/books/1")).await;
    assert_eq!(header(&response, "surrogate-key"), None);
    assert_eq!(header(&response, "cache-tag"), None);
}
