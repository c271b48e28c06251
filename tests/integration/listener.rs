//! `probe serve`'s HTTP listener: slow and idle clients are closed after the
//! read timeout, and connections beyond the limit wait to be accepted, so
//! idle clients cannot hold the prober's file descriptors.

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use twi_probe::web::listener::{Limits, serve};

/// Bounds every wait, so a listener that never closes fails instead of
/// hanging.
const BOUND: Duration = Duration::from_secs(10);

struct Web {
    addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Web {
    async fn start(limits: Limits) -> Web {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new().route("/healthz", get(|| async { "ok\n" }));
        let stop = CancellationToken::new();
        let task = tokio::spawn(serve(listener, app, limits, stop.clone()));
        Web { addr, stop, task }
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(BOUND, self.task)
            .await
            .expect("the listener drains")
            .unwrap();
    }
}

const REQUEST: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: probe\r\n\r\n";

/// Reads until the end of one `/healthz` response.
async fn read_response(s: &mut TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.ends_with(b"ok\n") {
        let n = tokio::time::timeout(BOUND, s.read(&mut buf))
            .await
            .expect("a response within the bound")
            .unwrap();
        assert!(n > 0, "closed before the response");
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8(got).unwrap()
}

/// Waits for the server to close the connection (EOF or reset), and
/// returns how long that took.
async fn closed(s: &mut TcpStream) -> Duration {
    let start = Instant::now();
    let mut buf = [0u8; 64];
    loop {
        match tokio::time::timeout(BOUND, s.read(&mut buf))
            .await
            .expect("the server closes the connection")
        {
            Ok(0) | Err(_) => return start.elapsed(),
            Ok(_) => {}
        }
    }
}

#[tokio::test]
async fn a_client_sending_half_a_request_head_is_closed_after_the_read_timeout() {
    let timeout = Duration::from_millis(300);
    let web = Web::start(Limits {
        read_timeout: timeout,
        max_connections: 16,
    })
    .await;
    let mut slow = TcpStream::connect(web.addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: pr")
        .await
        .unwrap();
    let took = closed(&mut slow).await;
    assert!(
        took >= timeout / 2,
        "closed after {took:?}, before the timeout"
    );
    web.stop().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_read_timeout() {
    let web = Web::start(Limits {
        read_timeout: Duration::from_millis(300),
        max_connections: 16,
    })
    .await;
    let mut client = TcpStream::connect(web.addr).await.unwrap();
    client.write_all(REQUEST).await.unwrap();
    let response = read_response(&mut client).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(!response.to_ascii_lowercase().contains("connection: close"));
    closed(&mut client).await;
    web.stop().await;
}

/// Past the limit, a client waits in the accept queue until a connection
/// ends, and is then served.
#[tokio::test]
async fn connections_beyond_the_limit_wait_until_one_ends() {
    let web = Web::start(Limits {
        read_timeout: Duration::from_secs(30),
        max_connections: 2,
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = TcpStream::connect(web.addr).await.unwrap();
        c.write_all(REQUEST).await.unwrap();
        read_response(&mut c).await;
        held.push(c);
    }
    let mut third = TcpStream::connect(web.addr).await.unwrap();
    third.write_all(REQUEST).await.unwrap();
    let mut buf = [0u8; 64];
    assert!(
        tokio::time::timeout(Duration::from_millis(300), third.read(&mut buf))
            .await
            .is_err(),
        "a third connection was served past the limit of 2"
    );
    drop(held.pop());
    let response = read_response(&mut third).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    drop(held);
    drop(third);
    web.stop().await;
}

/// Many idle clients, half with a partial request head: every one is
/// closed within a few read timeouts, and a real request is answered.
#[tokio::test]
async fn a_crowd_of_idle_clients_is_shed_and_requests_still_get_through() {
    let web = Web::start(Limits {
        read_timeout: Duration::from_millis(200),
        max_connections: 50,
    })
    .await;
    let mut crowd = Vec::new();
    for i in 0..200 {
        let mut c = TcpStream::connect(web.addr).await.unwrap();
        if i % 2 == 0 {
            c.write_all(b"GET /metrics HTTP/1.1\r\nX-Slow: ")
                .await
                .unwrap();
        }
        crowd.push(c);
    }
    let mut ok = TcpStream::connect(web.addr).await.unwrap();
    ok.write_all(REQUEST).await.unwrap();
    let response = read_response(&mut ok).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    for c in &mut crowd {
        closed(c).await;
    }
    web.stop().await;
}

/// The flags reach the listener of `probe serve` (the process).
#[tokio::test]
async fn probe_serve_applies_its_web_flags() {
    let site = crate::support::TestServer::start(crate::support::Reply::ok("ok")).await;
    let serve = crate::serve::Serve::start_with(
        &format!(
            "target: {{name: bot}}\nprobes:\n  - name: site\n    every: 1h\n    http: {{url: \"{}\"}}\n",
            site.url("/page")
        ),
        &["--web.read-timeout", "300ms", "--web.max-connections", "1"],
    )
    .await;
    let addr: SocketAddr = serve.base.trim_start_matches("http://").parse().unwrap();
    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHo")
        .await
        .unwrap();
    // The only connection allowed is taken: the next waits for it to end.
    let mut next = TcpStream::connect(addr).await.unwrap();
    next.write_all(REQUEST).await.unwrap();
    let took = closed(&mut slow).await;
    assert!(took >= Duration::from_millis(150), "closed after {took:?}");
    let response = read_response(&mut next).await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}
