//! The HTTP surface of `probe serve`: routes and handlers over the
//! [`Service`] (src/serve.rs), which owns schedules, reloads and metrics.
//! `view` gathers what the status page (`pages`) and the JSON API show;
//! `listener` accepts connections, within limits.

pub mod listener;
mod pages;
mod probe_endpoint;
mod view;

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use crate::scrape::accepts_gzip;
use crate::serve::Service;

/// The HTTP side: the status pages, their JSON, `/metrics`, `/probe`,
/// `/healthz`, `/ready`, `POST /-/reload`.
pub fn router(service: Arc<Service>) -> Router {
    let on_demand: probe_endpoint::ProbeState = (service.clone(), Arc::default());
    let scrapes = Router::new()
        .route("/probe", get(probe_endpoint::probe))
        .with_state(on_demand);
    Router::new()
        .route("/", get(index))
        .route("/probes/{name}", get(probe_page))
        .route("/api/v1/probes", get(api_probes))
        .route("/api/v1/probes/{name}/runs", get(api_runs))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/ready", get(ready))
        .route("/-/reload", post(reload))
        .with_state(service)
        .merge(scrapes)
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
    // Open to anyone who reaches the port (a browser page's POST too)
    // unless asked for, as Prometheus' and Alertmanager's lifecycle API.
    if !s.lifecycle_enabled() {
        return (
            StatusCode::FORBIDDEN,
            "lifecycle APIs are not enabled: start probe serve with --web.enable-lifecycle, or send SIGHUP to reload\n",
        )
            .into_response();
    }
    match s.reload().await {
        Ok(()) => (StatusCode::OK, "reloaded\n").into_response(),
        Err(e) => (
            StatusCode::BAD_REQUEST,
            format!("reload failed, the previous configuration keeps running:\n{e}\n"),
        )
            .into_response(),
    }
}

async fn index(State(s): State<Arc<Service>>) -> Html<String> {
    Html(pages::index(&view::overview(&s).await).into_string())
}

async fn probe_page(State(s): State<Arc<Service>>, Path(name): Path<String>) -> Response {
    let overview = view::overview(&s).await;
    match overview.probes.iter().find(|p| p.name == name) {
        Some(p) => Html(pages::probe(p).into_string()).into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Html(pages::not_found(&name).into_string()),
        )
            .into_response(),
    }
}

async fn api_probes(State(s): State<Arc<Service>>) -> Json<serde_json::Value> {
    Json(view::overview_json(&view::overview(&s).await))
}

async fn api_runs(State(s): State<Arc<Service>>, Path(name): Path<String>) -> Response {
    let overview = view::overview(&s).await;
    match overview.probes.iter().find(|p| p.name == name) {
        Some(p) => Json(json!({
            "probe": p.name,
            "capacity": p.capacity,
            "runs": p.runs.iter().map(view::run_json).collect::<Vec<_>>(),
        }))
        .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            Json(json!({ "error": format!("no probe named {name:?} is configured") })),
        )
            .into_response(),
    }
}
