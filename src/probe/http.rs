//! The `http` probe: GET or HEAD a URL and check its status and body.

use super::{
    Check, MAX_REDIRECTS, Outcome, classify_send_error, describe_http_error, off_runtime,
    read_body, shared_http_client,
};
use crate::config::{HttpMethod, HttpSpec};

/// What an http probe keeps between runs: only its client (the spec is its
/// `Probe`'s, passed to each check).
#[derive(Debug)]
pub struct HttpProbe {
    client: reqwest::Client,
}

impl HttpProbe {
    pub fn new(spec: &HttpSpec) -> Result<Self, String> {
        let client = shared_http_client(spec.follow_redirects)?;
        Ok(HttpProbe { client })
    }

    pub async fn check(&self, spec: &HttpSpec) -> Check {
        let request = match spec.method {
            HttpMethod::Get => self.client.get(spec.url.clone()),
            HttpMethod::Head => self.client.head(spec.url.clone()),
        };
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) if e.is_redirect() => {
                return Check::new(
                    Outcome::Failure,
                    format!("too many redirects (more than {MAX_REDIRECTS})"),
                );
            }
            Err(e) => return Check::new(classify_send_error(&e), describe_http_error(&e)),
        };
        let status = response.status().as_u16();
        if !spec.expect_status.contains(status) {
            let note = if response.status().is_redirection() && !spec.follow_redirects {
                "; follow_redirects is off"
            } else {
                ""
            };
            return Check::new(
                Outcome::Failure,
                format!("HTTP {status}, expected {}{note}", spec.expect_status),
            );
        }
        let Some(regex) = &spec.body_regex else {
            return Check::new(Outcome::Success, format!("HTTP {status}"));
        };
        let body = match read_body(response, spec.max_body_size).await {
            Ok(b) => b,
            Err(e) => return Check::new(Outcome::Failure, e.detail()),
        };
        let regex = regex.clone();
        let matched = off_runtime(move || regex.is_match(&String::from_utf8_lossy(&body))).await;
        match matched {
            Ok(true) => Check::new(Outcome::Success, format!("HTTP {status}, body matches")),
            Ok(false) => Check::new(
                Outcome::Failure,
                format!(
                    "HTTP {status}, body does not match /{}/",
                    spec.body_regex.as_ref().map_or("", |r| r.as_str())
                ),
            ),
            Err(e) => Check::new(Outcome::Inconclusive, e),
        }
    }
}
