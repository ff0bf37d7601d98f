//! [`HttpPurgeSink`]: purges passed on to a CDN over HTTP (feature `cdn-http`).

use super::{PurgeEvent, PurgeMode, PurgeSink, PurgeSinkError};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::fmt;

/// One request of a purge: method, URL, and headers besides the sink's own.
type PurgeRequest = (Method, String, Vec<(String, String)>);

/// Fastly takes at most this many surrogate keys in one batch purge.
const FASTLY_BATCH: usize = 256;

#[derive(Debug, Clone)]
enum Target {
    Fastly {
        api: String,
        service: String,
        site: Option<String>,
    },
    PerUrl {
        base: String,
        tag_header: Option<String>,
    },
}

/// A [`PurgeSink`] that sends purge requests to a CDN, for a
/// [`PurgeForwarding`](super::PurgeForwarding) store.
///
/// Two shapes of purge API:
///
/// - [`fastly`](Self::fastly): tags as surrogate keys, `POST {api}/service/{id}/purge` with
///   `Surrogate-Key: tag1 tag2` (at most 256 per request), paths as
///   `POST {api}/purge/{site}{path}` once [`site`](Self::site) is set, everything as
///   `POST {api}/service/{id}/purge_all`; `Fastly-Key` carries the token and soft purges
///   add `Fastly-Soft-Purge: 1` (a purge of everything is always hard there).
/// - [`per_url`](Self::per_url): `PURGE {base}{path}` for each path (Varnish, Nginx and most
///   caches accept it), tags in one `PURGE {base}/` with the header named by
///   [`tag_header`](Self::tag_header) when set (Varnish `xkey-purge`).
///
/// A `2xx` answer is a delivery; `408`, `429` and `5xx` are retried; any other answer is a
/// permanent failure. The client speaks plain HTTP/1.1: for `https://` URLs (Fastly's API)
/// give it a TLS connector with [`connector`](Self::connector), e.g. `hyper-rustls`'s
/// `HttpsConnector`.
///
/// ```
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// use tower_response_cache::store::{HttpPurgeSink, PurgeForwarding};
/// use tower_response_cache::MemoryStore;
///
/// // Here a purge proxy on the same network; Fastly's own API needs a TLS connector.
/// let sink = HttpPurgeSink::fastly("SERVICE_ID", "API_TOKEN")
///     .api_base("http://purge-proxy.internal:8080")
///     .site("www.example.com");
/// let store = PurgeForwarding::new(MemoryStore::new(), sink);
/// # drop(store) });
/// ```
pub struct HttpPurgeSink<C = HttpConnector> {
    client: Client<C, Full<Bytes>>,
    target: Target,
    headers: Vec<(String, String)>,
}

impl<C> fmt::Debug for HttpPurgeSink<C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Header values may hold credentials: only their names are shown.
        let headers: Vec<&str> = self.headers.iter().map(|(name, _)| name.as_str()).collect();
        f.debug_struct("HttpPurgeSink")
            .field("target", &self.target)
            .field("headers", &headers)
            .finish_non_exhaustive()
    }
}

fn plain_client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

impl HttpPurgeSink {
    /// Fastly's purge API for the service `service_id`, authenticated by `api_token`, at
    /// `https://api.fastly.com` unless [`api_base`](Self::api_base) says otherwise.
    pub fn fastly(service_id: impl Into<String>, api_token: impl Into<String>) -> Self {
        HttpPurgeSink {
            client: plain_client(),
            target: Target::Fastly {
                api: "https://api.fastly.com".to_owned(),
                service: service_id.into(),
                site: None,
            },
            headers: vec![("fastly-key".to_owned(), api_token.into())],
        }
    }

    /// `PURGE {base}{path}` for each purged path (`base` such as `http://varnish:6081`).
    pub fn per_url(base: impl Into<String>) -> Self {
        HttpPurgeSink {
            client: plain_client(),
            target: Target::PerUrl {
                base: base.into().trim_end_matches('/').to_owned(),
                tag_header: None,
            },
            headers: Vec::new(),
        }
    }
}

impl<C> HttpPurgeSink<C> {
    /// The base URL of Fastly's API (a proxy, a test server). No effect on
    /// [`per_url`](Self::per_url).
    pub fn api_base(mut self, url: impl Into<String>) -> Self {
        if let Target::Fastly { api, .. } = &mut self.target {
            *api = url.into().trim_end_matches('/').to_owned();
        }
        self
    }

    /// The host whose URLs Fastly caches (`www.example.com`): purged paths are then purged
    /// as URLs of it. Without it, a Fastly sink passes on tags only.
    pub fn site(mut self, host: impl Into<String>) -> Self {
        if let Target::Fastly { site, .. } = &mut self.target {
            *site = Some(host.into().trim_end_matches('/').to_owned());
        }
        self
    }

    /// For [`per_url`](Self::per_url): sends tags too, space-separated in this header of
    /// one `PURGE {base}/`. No effect on Fastly.
    pub fn tag_header(mut self, name: impl Into<String>) -> Self {
        if let Target::PerUrl { tag_header, .. } = &mut self.target {
            *tag_header = Some(name.into());
        }
        self
    }

    /// A header added to every purge request (a token). An invalid name or value makes
    /// each delivery fail permanently, with a logged error.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The same sink over another connector, e.g. one that speaks TLS.
    pub fn connector<C2>(self, connector: C2) -> HttpPurgeSink<C2>
    where
        C2: Connect + Clone + Send + Sync + 'static,
    {
        HttpPurgeSink {
            client: Client::builder(TokioExecutor::new()).build(connector),
            target: self.target,
            headers: self.headers,
        }
    }

    /// The requests that pass `event` on.
    fn requests(&self, event: &PurgeEvent) -> Vec<PurgeRequest> {
        let soft = event.mode == PurgeMode::Soft;
        let mut out = Vec::new();
        match &self.target {
            Target::Fastly { api, service, site } => {
                let soft_header = || match soft {
                    true => vec![("fastly-soft-purge".to_owned(), "1".to_owned())],
                    false => Vec::new(),
                };
                if event.all {
                    out.push((Method::POST, format!("{api}/service/{service}/purge_all"), Vec::new()));
                }
                for keys in event.tags.chunks(FASTLY_BATCH) {
                    let mut headers = soft_header();
                    headers.push(("surrogate-key".to_owned(), keys.join(" ")));
                    out.push((Method::POST, format!("{api}/service/{service}/purge"), headers));
                }
                if let Some(site) = site {
                    for path in &event.paths {
                        out.push((Method::POST, format!("{api}/purge/{site}{path}"), soft_header()));
                    }
                }
            }
            Target::PerUrl { base, tag_header } => {
                let purge = Method::from_bytes(b"PURGE").expect("PURGE is a valid method");
                for path in &event.paths {
                    out.push((purge.clone(), format!("{base}{path}"), Vec::new()));
                }
                if let (Some(name), false) = (tag_header, event.tags.is_empty()) {
                    out.push((purge, format!("{base}/"), vec![(name.clone(), event.tags.join(" "))]));
                }
            }
        }
        out
    }
}

impl<C> HttpPurgeSink<C>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    async fn send(&self, method: Method, url: String, extra: Vec<(String, String)>) -> Result<(), PurgeSinkError> {
        let mut request = Request::builder().method(method).uri(&url);
        for (name, value) in self.headers.iter().chain(&extra) {
            request = request.header(name.as_str(), value.as_str());
        }
        let request = request.body(Full::new(Bytes::new())).map_err(|error| {
            PurgeSinkError::with_source(format!("cannot build a purge request for {url}"), error).permanent()
        })?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|error| PurgeSinkError::with_source(format!("purge request to {url} failed"), error))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let error = PurgeSinkError::new(format!("{url} answered {status}"));
        match status == StatusCode::REQUEST_TIMEOUT
            || status == StatusCode::TOO_MANY_REQUESTS
            || status.is_server_error()
        {
            true => Err(error),
            false => Err(error.permanent()),
        }
    }
}

impl<C> PurgeSink for HttpPurgeSink<C>
where
    C: Connect + Clone + Send + Sync + 'static,
{
    async fn deliver(&self, event: PurgeEvent) -> Result<(), PurgeSinkError> {
        let requests = self.requests(&event);
        if requests.is_empty() {
            tracing::debug!(?event, "nothing in this purge the CDN's API can take");
        }
        // A retry sends them all again: purges are idempotent.
        for (method, url, headers) in requests {
            self.send(method, url, headers).await?;
        }
        Ok(())
    }
}
