//! Filling the cache ahead of traffic.

use crate::future::HttpService;
use crate::status::{CacheOutcome, Served};
use crate::{CacheLayer, Store};
use futures_util::StreamExt;
use http::Request;
use std::future::poll_fn;
use tower_layer::Layer;
use tower_service::Service;

/// What [`CacheLayer::warm`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WarmReport {
    /// Requests sent.
    pub requested: usize,
    /// Responses stored.
    pub stored: usize,
    /// Requests already answered by a fresh entry (nothing to do).
    pub already_fresh: usize,
    /// Responses the cache would not store (see their [`CacheOutcome::not_stored`]).
    pub not_stored: usize,
    /// Requests the inner service failed.
    pub failed: usize,
}

impl<St: Store> CacheLayer<St> {
    /// Sends `requests` through this layer in front of `inner`, at most `concurrency` at a
    /// time, so that their responses are stored before traffic asks for them.
    ///
    /// ```
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
    /// use axum::{routing::get, Router};
    /// use tower_response_cache::{CacheLayer, MemoryStore};
    ///
    /// let app: Router = Router::new().route("/books/{id}", get(|| async { "a book" }));
    /// let layer = CacheLayer::new(MemoryStore::new());
    /// let requests = (1..=20).map(|id| http::Request::get(format!("/books/{id}")).body(axum::body::Body::empty()).unwrap());
    /// let report = layer.warm(app, requests, 4).await;
    /// assert_eq!(report.stored, 20);
    /// # });
    /// ```
    pub async fn warm<S, ReqB, I>(&self, inner: S, requests: I, concurrency: usize) -> WarmReport
    where
        S: HttpService<ReqB>,
        ReqB: Send + 'static,
        I: IntoIterator<Item = Request<ReqB>>,
    {
        let service = self.layer(inner);
        let calls = futures_util::stream::iter(requests).map(|mut request| {
            let mut service = service.clone();
            // No one reads these bodies: have them read whole and stored before the answer.
            request.extensions_mut().insert(crate::body::ReadWhole);
            async move {
                poll_fn(|cx| service.poll_ready(cx)).await?;
                service.call(request).await
            }
        });
        calls
            .buffer_unordered(concurrency.max(1))
            .fold(WarmReport::default(), |mut report, result| async move {
                report.requested += 1;
                let outcome = result.as_ref().map(|r| r.extensions().get::<CacheOutcome>().copied());
                match outcome {
                    Err(_) => report.failed += 1,
                    Ok(Some(o)) if matches!(o.served(), Served::Hit | Served::Stale(_)) => report.already_fresh += 1,
                    Ok(Some(o)) if o.stored() => report.stored += 1,
                    Ok(_) => report.not_stored += 1,
                }
                report
            })
            .await
    }
}
