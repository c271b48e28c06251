//! The HTTP surface of `probe serve`: routes and handlers over the
//! [`Service`] (src/serve.rs), which owns schedules, reloads and metrics.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

use crate::scrape::accepts_gzip;
use crate::serve::Service;

/// The HTTP side: `/metrics`, `/healthz`, `/ready`, `POST /-/reload`.
pub fn router(service: Arc<Service>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/-/reload", post(reload))
        .with_state(service)
}

async fn metrics(State(s): State<Arc<Service>>, headers: HeaderMap) -> Response {
    let gzip = accepts_gzip(
        headers
            .get_all(header::ACCEPT_ENCODING)
            .iter()
            .filter_map(|v| v.to_str().ok()),
    );
    let body = s.scrape.scrape(|| s.metrics(), gzip).await;
    let mut response = (
        [
            (
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            ),
            (header::VARY, "Accept-Encoding"),
        ],
        body.bytes,
    )
        .into_response();
    if body.gzipped {
        response.headers_mut().insert(
            header::CONTENT_ENCODING,
            header::HeaderValue::from_static("gzip"),
        );
    }
    response
}

async fn ready(State(s): State<Arc<Service>>) -> Response {
    match s.ready() {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {e}\n")).into_response(),
    }
}

async fn reload(State(s): State<Arc<Service>>) -> Response {
    match s.reload().await {
        Ok(()) => (StatusCode::OK, "reloaded\n").into_response(),
        Err(e) => (
            StatusCode::BAD_REQUEST,
            format!("reload failed, the previous configuration keeps running:\n{e}\n"),
        )
            .into_response(),
    }
}
