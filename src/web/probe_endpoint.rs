//! `GET /probe`: one probe run per scrape (the multi-target exporter
//! pattern; the runs themselves are src/on_demand.rs).
//!
//! `?probe=NAME` runs a configured probe; `?module=NAME&target=...` a
//! module on a target. A request it cannot serve (no such probe or module,
//! a target the module refuses, a bad parameter or header) is a 400 with
//! the reason, and nothing runs. `&debug=true` answers with a trace of the
//! run for a person instead of the metrics.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::on_demand::{OnDemand, Request, budget_from_header, debug_trace, render};
use crate::serve::Service;

/// Prometheus sends its scrape timeout in this header.
const SCRAPE_TIMEOUT_HEADER: &str = "X-Prometheus-Scrape-Timeout-Seconds";

pub(super) type ProbeState = (Arc<Service>, Arc<OnDemand>);

pub(super) async fn probe(
    State((service, on_demand)): State<ProbeState>,
    Query(params): Query<Vec<(String, String)>>,
    headers: HeaderMap,
) -> Response {
    let (request, debug) = match parse(&params) {
        Ok(r) => r,
        Err(e) => return bad_request(e),
    };
    let header = headers
        .get(SCRAPE_TIMEOUT_HEADER)
        .map(|v| v.to_str().unwrap_or("(not text)"));
    let budget = match budget_from_header(header) {
        Ok(b) => b,
        Err(e) => return bad_request(e),
    };
    let runs = match on_demand.run(&service, &request, budget).await {
        Ok(runs) => runs,
        Err(e) => return bad_request(e),
    };
    if debug {
        return (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            debug_trace(&request, budget, &runs),
        )
            .into_response();
    }
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        render(&runs),
    )
        .into_response()
}

fn bad_request(reason: String) -> Response {
    (StatusCode::BAD_REQUEST, format!("{reason}\n")).into_response()
}

/// The query: `probe`, or `module` with `target`; `debug` (`true`/`false`).
/// Each at most once, nothing else: a mistyped parameter is an error, not
/// silently ignored.
fn parse(params: &[(String, String)]) -> Result<(Request, bool), String> {
    let mut seen: HashMap<&str, &str> = HashMap::new();
    for (k, v) in params {
        match k.as_str() {
            "probe" | "module" | "target" | "debug" => {
                if seen.insert(k.as_str(), v.as_str()).is_some() {
                    return Err(format!("parameter {k:?} is given twice"));
                }
            }
            other => {
                return Err(format!(
                    "unknown parameter {:?}: use probe=NAME, or module=NAME&target=..., and optionally debug=true",
                    other.chars().take(40).collect::<String>()
                ));
            }
        }
    }
    let debug = match seen.get("debug") {
        None | Some(&"false") => false,
        Some(&"true") => true,
        Some(_) => return Err("debug must be true or false".into()),
    };
    let request = match (seen.get("probe"), seen.get("module"), seen.get("target")) {
        (Some(p), None, None) if !p.is_empty() => Request::Probe(p.to_string()),
        (None, Some(m), Some(t)) if !m.is_empty() && !t.is_empty() => Request::Module {
            module: m.to_string(),
            target: t.to_string(),
        },
        (None, Some(_), None) => return Err("module needs a target parameter".into()),
        (None, None, Some(_)) => {
            return Err("target needs a module parameter (module=NAME&target=...)".into());
        }
        (Some(_), _, _) if seen.len() > 1 + usize::from(seen.contains_key("debug")) => {
            return Err("give probe=NAME, or module=NAME&target=..., not both".into());
        }
        _ => {
            return Err(
                "give probe=NAME (a probe from probes.yaml), or module=NAME&target=... (a module applied to a target)"
                    .into(),
            );
        }
    };
    Ok((request, debug))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn requests_are_checked_strictly() {
        assert!(matches!(
            parse(&q(&[("probe", "help")])),
            Ok((Request::Probe(p), false)) if p == "help"
        ));
        assert!(matches!(
            parse(&q(&[
                ("module", "http_2xx"),
                ("target", "http://x/"),
                ("debug", "true")
            ])),
            Ok((Request::Module { .. }, true))
        ));
        for (bad, why) in [
            (vec![], "give probe=NAME"),
            (vec![("probe", "a"), ("probe", "b")], "given twice"),
            (vec![("module", "m")], "needs a target"),
            (vec![("target", "t")], "needs a module"),
            (
                vec![("probe", "a"), ("module", "m"), ("target", "t")],
                "not both",
            ),
            (
                vec![("probe", "a"), ("modul", "m")],
                "unknown parameter \"modul\"",
            ),
            (vec![("probe", "a"), ("debug", "yes")], "debug must be"),
            (vec![("probe", "")], "give probe=NAME"),
        ] {
            let err = parse(&q(&bad)).err().unwrap_or_default();
            assert!(err.contains(why), "{bad:?}: {err}");
        }
    }
}
