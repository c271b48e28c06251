//! The status pages, rendered on the server with maud (every interpolated
//! value is HTML-escaped: reply text and details come from the bot and
//! targets). Self-contained for air-gapped hosts: inline CSS and SVG, no
//! script, no external font; refreshed by a meta tag; one column on phones;
//! light and dark from the reader's colour scheme.

use std::time::{Duration, SystemTime};

use maud::{DOCTYPE, Markup, PreEscaped, html};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use super::view::{Overview, ProbeView, rfc3339};
use crate::probe::{Outcome, ProbeResult};
use crate::report::format_seconds;

/// Seconds between the page's own refreshes.
pub const REFRESH_SECONDS: u32 = 10;

const STYLE: &str = r#"
:root { color-scheme: light dark; --bg:#fff; --fg:#1b1b1f; --muted:#5d6068; --line:#d9dbe0;
  --ok:#1a7f37; --bad:#c62828; --unk:#7a7f87; --card:#f5f6f8; }
@media (prefers-color-scheme: dark) { :root { --bg:#15171c; --fg:#e6e7ea; --muted:#a0a4ad;
  --line:#2e323b; --ok:#3fb950; --bad:#f47067; --unk:#8b9099; --card:#1d2027; } }
* { box-sizing: border-box; }
body { margin:0; padding:1rem; background:var(--bg); color:var(--fg);
  font:15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
main { max-width: 72rem; margin: 0 auto; }
h1 { font-size:1.4rem; margin:0 0 .5rem; } h2 { font-size:1.1rem; margin:1.5rem 0 .5rem; }
a { color: inherit; }
dl.facts { display:grid; grid-template-columns:max-content 1fr; gap:.2rem 1rem; margin:0; }
dl.facts dt { color:var(--muted); } dl.facts dd { margin:0; overflow-wrap:anywhere; }
.scroll { overflow-x:auto; }
table { border-collapse:collapse; width:100%; }
th, td { text-align:left; padding:.35rem .5rem; border-bottom:1px solid var(--line); vertical-align:top; }
th { color:var(--muted); font-weight:600; font-size:.85rem; }
td.detail { overflow-wrap:anywhere; min-width:12rem; }
table.runs td { white-space:nowrap; } table.runs td.detail { white-space:normal; }
.state { font-weight:600; white-space:nowrap; }
.success { color:var(--ok); } .failure, .timeout, .unreachable { color:var(--bad); }
.inconclusive, .none { color:var(--unk); }
.muted { color:var(--muted); font-size:.85rem; }
code { font-size:.85rem; overflow-wrap:anywhere; }
svg.chart { width:100%; height:auto; background:var(--card); border-radius:4px; }
svg.chart .axis { stroke:var(--line); } svg.chart text { fill:var(--muted); font-size:11px; }
svg.chart .lat { fill:none; stroke:var(--ok); stroke-width:1.5; }
svg.chart circle.success { fill:var(--ok); } svg.chart rect { fill:var(--bad); }
svg.chart rect.inconclusive { fill:var(--unk); }
@media (max-width: 640px) {
  body { padding:.6rem; font-size:14px; }
  table.probes thead { display:none; }
  table.probes tr { display:block; border-bottom:1px solid var(--line); padding:.4rem 0; }
  table.probes td { display:block; border:0; padding:.1rem 0; }
  table.probes td[data-label]::before { content: attr(data-label) ": "; color:var(--muted); }
}
"#;

fn layout(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta http-equiv="refresh" content=(REFRESH_SECONDS);
                meta name="color-scheme" content="light dark";
                // No favicon request (a 404 would be a console error).
                link rel="icon" href="data:,";
                title { (title) }
                style { (PreEscaped(STYLE)) }
            }
            body { main { (body) } }
        }
    }
}

/// What a path segment escapes: all but RFC 3986's unreserved characters.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// A link to a probe's page; the name is percent-encoded into the path.
pub fn probe_href(name: &str) -> String {
    format!("/probes/{}", utf8_percent_encode(name, SEGMENT))
}

fn when(t: SystemTime) -> Markup {
    let full = rfc3339(t);
    // "2026-11-30T05:31:17.123Z" shown as "2026-11-30 05:31:17Z".
    let short = format!("{} {}Z", &full[..10], &full[11..19]);
    html! { time datetime=(full) { (short) } }
}

fn outcome(o: Option<Outcome>) -> Markup {
    match o {
        Some(o) => html! { span class={ "state " (o.as_str()) } { (o.as_str()) } },
        None => html! { span class="state none" { "no runs yet" } },
    }
}

fn dur(d: Option<Duration>) -> Markup {
    match d {
        Some(d) => html! { (format_seconds(d)) },
        None => html! { span class="muted" { "–" } },
    }
}

pub fn index(o: &Overview) -> Markup {
    let title = format!("{} — probe status", o.target);
    layout(
        &title,
        html! {
            h1 { "Probes of " (o.target) }
            dl.facts {
                dt { "Prober's gateway" }
                dd {
                    span class={ "state " (gateway_class(o.gateway)) } { (o.gateway) }
                    @if let Some(d) = &o.gateway_detail { " — " (d) }
                }
                dt { "Config" } dd { code { (o.config_file) } }
                dt { "Serving since" } dd { (when(o.started)) }
                dt { "Last reload" }
                dd {
                    @match &o.last_reload {
                        None => span.muted { "none since start" },
                        Some(r) => {
                            (when(r.at)) " "
                            @match &r.error {
                                None => span class="state success" { "ok" },
                                Some(e) => { span class="state failure" { "failed" } " — " (e) },
                            }
                        }
                    }
                }
            }
            h2 { "Probes" }
            p.muted {
                "Over each probe's last " (o.history) " runs at most. Latency is of successful runs. "
                "This page refreshes every " (REFRESH_SECONDS) " s; the same data is at "
                a href="/api/v1/probes" { code { "/api/v1/probes" } } "."
            }
            div.scroll {
                table.probes {
                    thead { tr {
                        th { "Probe" } th { "State" } th { "Success" } th { "p50" } th { "p90" }
                        th { "Last run" } th { "Next run" }
                    } }
                    tbody {
                        @for p in &o.probes { (probe_row(p)) }
                    }
                }
            }
        },
    )
}

fn gateway_class(state: &str) -> &'static str {
    match state {
        "connected" => "success",
        "disconnected" => "failure",
        _ => "none",
    }
}

fn probe_row(p: &ProbeView) -> Markup {
    html! {
        tr id={ "probe-" (p.name) } {
            td data-label="Probe" {
                a href=(probe_href(&p.name)) { (p.name) }
                br; span.muted { (p.kind) ", " (p.schedule) }
            }
            td data-label="State" {
                (outcome(p.state.map(|(o, _)| o)))
                @if let Some((_, since)) = p.state { br; span.muted { "since " (when(since)) } }
            }
            td data-label="Success" {
                @match p.success_rate {
                    Some(r) => { (format!("{:.1}%", r * 100.0)) br; span.muted { "of " (p.runs.len()) " runs" } },
                    None => span.muted { "–" },
                }
            }
            td data-label="p50" { (dur(p.p50)) }
            td data-label="p90" { (dur(p.p90)) }
            td.detail data-label="Last run" {
                @match p.last() {
                    None => span.muted { "none yet" },
                    Some(r) => {
                        (outcome(Some(r.outcome))) " " (when(r.started_at)) ", took " (format_seconds(r.duration))
                        br; span.muted { (r.detail) }
                    }
                }
            }
            td data-label="Next run" {
                @match p.next_run { Some(t) => (when(t)), None => span.muted { "–" } }
            }
        }
    }
}

pub fn probe(p: &ProbeView) -> Markup {
    layout(
        &format!("{} — probe", p.name),
        html! {
            p { a href="/" { "← all probes" } }
            h1 { (p.name) }
            dl.facts {
                dt { "Kind" } dd { (p.kind) ", " (p.schedule) }
                dt { "State" }
                dd {
                    (outcome(p.state.map(|(o, _)| o)))
                    @if let Some((_, since)) = p.state { " since " (when(since)) }
                }
                dt { "Next run" } dd { @match p.next_run { Some(t) => (when(t)), None => "–" } }
            }
            h2 { "Latency and outcomes" }
            (chart(&p.runs))
            h2 { "Last " (p.runs.len()) " runs (of " (p.capacity) " kept)" }
            div.scroll {
                table.runs {
                    thead { tr {
                        th { "Started" } th { "Outcome" } th { "Duration" } th { "Latency" }
                        th { "Detail" } th { "Request id" }
                    } }
                    tbody {
                        @for r in &p.runs {
                            tr {
                                td { (when(r.started_at)) }
                                td { (outcome(Some(r.outcome))) }
                                td { (format_seconds(r.duration)) }
                                td { (dur(r.latency())) }
                                td.detail { (r.detail) }
                                td { code { (r.request_id) } }
                            }
                        }
                    }
                }
            }
            p.muted { "As JSON: " a href={ "/api/v1" (probe_href(&p.name)) "/runs" } { "runs" } }
        },
    )
}

/// Latency of successful runs as a line, other outcomes as bars along the
/// top; oldest on the left.
fn chart(runs: &[ProbeResult]) -> Markup {
    const W: f64 = 600.0;
    const H: f64 = 160.0;
    const TOP: f64 = 18.0;
    const BOTTOM: f64 = 16.0;
    if runs.is_empty() {
        return html! { p.muted { "No runs yet." } };
    }
    let oldest_first: Vec<&ProbeResult> = runs.iter().rev().collect();
    let slowest = oldest_first.iter().filter_map(|r| r.latency()).max();
    let max = slowest.unwrap_or_default().as_secs_f64().max(0.001);
    let step = W / oldest_first.len() as f64;
    let x = |i: usize| step * (i as f64 + 0.5);
    let y = |d: Duration| H - BOTTOM - (d.as_secs_f64() / max) * (H - TOP - BOTTOM - 4.0);
    let line: Vec<String> = oldest_first
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.latency().map(|l| format!("{:.1},{:.1}", x(i), y(l))))
        .collect();
    html! {
        svg.chart viewBox={ "0 0 " (W) " " (H) } role="img"
            aria-label={ "Latency and outcomes of the last " (runs.len()) " runs" } {
            line.axis x1="0" y1=(H - BOTTOM) x2=(W) y2=(H - BOTTOM) {}
            text x="4" y=(H - 3.0) { "0" }
            @if let Some(slowest) = slowest {
                text x="4" y=(TOP + 8.0) { (format_seconds(slowest)) }
            }
            @if line.len() > 1 { polyline.lat points=(line.join(" ")) {} }
            @for (i, r) in oldest_first.iter().enumerate() {
                @match r.latency() {
                    Some(l) => circle.success cx=(format!("{:.1}", x(i))) cy=(format!("{:.1}", y(l))) r="2.5" {
                        title { (rfc3339(r.started_at)) ": " (format_seconds(l)) }
                    },
                    None => rect class=(r.outcome.as_str()) x=(format!("{:.1}", x(i) - step * 0.4))
                        y="2" width=(format!("{:.1}", (step * 0.8).max(1.0))) height=(TOP - 6.0) {
                        title { (rfc3339(r.started_at)) ": " (r.outcome.as_str()) }
                    },
                }
            }
        }
    }
}

pub fn not_found(name: &str) -> Markup {
    layout(
        "No such probe",
        html! {
            p { a href="/" { "← all probes" } }
            h1 { "No such probe" }
            p { "No probe named " code { (name) } " is configured." }
        },
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn probe_links_percent_encode_shard_names() {
        assert_eq!(
            super::probe_href("presence[shard 1]"),
            "/probes/presence%5Bshard%201%5D"
        );
        assert_eq!(super::probe_href("help-command"), "/probes/help-command");
    }
}
