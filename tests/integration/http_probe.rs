//! The HTTP probe against a real HTTP server on 127.0.0.1.

use std::sync::Arc;
use std::time::Duration;

use axum::http::Method;
use twi_probe::probe::{Outcome, Probe, ProbeResult, run_once};

use crate::support::{Reply, TestServer, config, refused_addr};

async fn probe_once(url: &str, extra: &str) -> ProbeResult {
    let cfg = config(&format!(
        r#"
target: {{name: bot}}
probes:
  - name: site
    every: 30s
    timeout: 1s
    http:
      url: "{url}"
{extra}
"#
    ));
    run_once(Arc::new(Probe::new(cfg.probes[0].clone(), None).unwrap())).await
}

#[tokio::test]
async fn a_2xx_answer_succeeds() {
    let server = TestServer::start(Reply::ok("The Wandering Inn")).await;
    let r = probe_once(&server.url("/page"), "").await;
    assert_eq!(r.outcome, Outcome::Success, "{}", r.detail);
    assert_eq!(r.detail, "HTTP 200");
    assert_eq!(server.methods_seen(), vec![Method::GET]);
}

#[tokio::test]
async fn a_wrong_status_is_a_failure() {
    let server = TestServer::start(Reply {
        status: 500,
        body: "oops".into(),
        delay: Duration::ZERO,
    })
    .await;
    let r = probe_once(&server.url("/page"), "").await;
    assert_eq!(r.outcome, Outcome::Failure);
    assert_eq!(r.detail, "HTTP 500, expected 2xx");

    let r = probe_once(&server.url("/page"), "      expect_status: [500]").await;
    assert_eq!(r.outcome, Outcome::Success, "an expected 500 is fine");
}

#[tokio::test]
async fn body_regex_match_and_mismatch() {
    let server = TestServer::start(Reply::ok("Welcome to The Wandering Inn")).await;
    let r = probe_once(
        &server.url("/page"),
        "      body_regex: \"Wandering\\\\s+Inn\"",
    )
    .await;
    assert_eq!(r.outcome, Outcome::Success, "{}", r.detail);
    let r = probe_once(&server.url("/page"), "      body_regex: \"Maintenance\"").await;
    assert_eq!(r.outcome, Outcome::Failure);
    assert_eq!(r.detail, "HTTP 200, body does not match /Maintenance/");
}

#[tokio::test]
async fn redirects_followed_or_not() {
    let server = TestServer::start(Reply::ok("moved here")).await;
    let r = probe_once(&server.url("/old"), "").await;
    assert_eq!(
        r.outcome,
        Outcome::Success,
        "followed by default: {}",
        r.detail
    );

    let r = probe_once(&server.url("/old"), "      follow_redirects: false").await;
    assert_eq!(r.outcome, Outcome::Failure);
    assert_eq!(r.detail, "HTTP 301, expected 2xx; follow_redirects is off");

    let r = probe_once(
        &server.url("/old"),
        "      follow_redirects: false\n      expect_status: [301]",
    )
    .await;
    assert_eq!(r.outcome, Outcome::Success, "{}", r.detail);

    let r = probe_once(&server.url("/loop"), "").await;
    assert_eq!(r.outcome, Outcome::Failure);
    assert_eq!(r.detail, "too many redirects (more than 10)");
}

#[tokio::test]
async fn head_requests_use_head() {
    let server = TestServer::start(Reply::ok("x")).await;
    let r = probe_once(&server.url("/page"), "      method: HEAD").await;
    assert_eq!(r.outcome, Outcome::Success, "{}", r.detail);
    assert_eq!(server.methods_seen(), vec![Method::HEAD]);
}

#[tokio::test]
async fn connection_refused_is_unreachable() {
    let addr = refused_addr().await;
    let r = probe_once(&format!("http://{addr}/"), "").await;
    assert_eq!(r.outcome, Outcome::Unreachable, "{}", r.detail);
    assert!(r.detail.to_lowercase().contains("refused"), "{}", r.detail);
}

#[tokio::test]
async fn a_slow_site_times_out() {
    let server = TestServer::start(Reply {
        status: 200,
        body: "late".into(),
        delay: Duration::from_secs(30),
    })
    .await;
    let r = probe_once(&server.url("/page"), "").await;
    assert_eq!(r.outcome, Outcome::Timeout);
    assert_eq!(r.detail, "no answer within 1s");
}

/// A bare HTTP/1.1 server that answers every request `200 ok` and keeps the
/// connection open unless told to close: it counts the connections made.
async fn counting_server() -> (String, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/page", listener.local_addr().unwrap());
    let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                loop {
                    let Ok(n) = socket.read(&mut buf).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    seen.extend_from_slice(&buf[..n]);
                    let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") else {
                        continue;
                    };
                    let head = String::from_utf8_lossy(&seen[..end]).to_ascii_lowercase();
                    seen.drain(..end + 4);
                    let close = head.contains("connection: close");
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n{}\r\nok",
                        if close { "connection: close\r\n" } else { "" }
                    );
                    if socket.write_all(answer.as_bytes()).await.is_err() || close {
                        return;
                    }
                }
            });
        }
    });
    (url, accepted)
}

#[tokio::test]
async fn every_run_connects_anew_like_a_new_client() {
    let (url, accepted) = counting_server().await;
    let cfg = config(&format!(
        "target: {{name: bot}}\nprobes:\n  - name: site\n    every: 30s\n    timeout: 1s\n    http: {{url: \"{url}\"}}\n"
    ));
    let probe = Arc::new(Probe::new(cfg.probes[0].clone(), None).unwrap());
    for _ in 0..3 {
        let r = run_once(probe.clone()).await;
        assert_eq!(r.outcome, Outcome::Success, "{}", r.detail);
    }
    // A kept-alive connection would hide what a new client meets (a
    // listener that stopped accepting, an expired certificate).
    assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 3);
}

#[tokio::test]
async fn bodies_are_read_up_to_max_body_size_and_no_further() {
    let server = TestServer::start(Reply::ok("x")).await;
    // An endless body: reading stops at the limit, long before the timeout.
    let r = probe_once(
        &server.url("/endless"),
        "      body_regex: \"never\"\n      max_body_size: 1MiB",
    )
    .await;
    assert_eq!(r.outcome, Outcome::Failure, "{}", r.detail);
    assert_eq!(
        r.detail,
        "the body is larger than max_body_size (1.0 MiB); it was not read further"
    );
    assert!(r.duration < Duration::from_secs(1), "{:?}", r.duration);
    assert!(
        server.endless_bytes() < 16 << 20,
        "the prober stopped reading: {} bytes produced",
        server.endless_bytes()
    );
    // A body announced larger than the limit is not read at all; without a
    // body check the body is never read.
    let r = probe_once(&server.url("/big"), "      body_regex: \"s\"").await;
    assert_eq!(r.outcome, Outcome::Failure, "{}", r.detail);
    assert!(
        r.detail.contains("larger than max_body_size (16.0 MiB)"),
        "{}",
        r.detail
    );
    let r = probe_once(&server.url("/big"), "").await;
    assert_eq!(r.outcome, Outcome::Success, "{}", r.detail);
}
