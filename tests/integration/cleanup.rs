//! `cleanup: true`: a probe message that cannot be deleted is said in the
//! log (it would pile up in the channel unseen), and the run's outcome
//! stands.

use std::path::Path;
use std::sync::{Arc, Mutex};

use twi_probe::config::{Config, Secret};
use twi_probe::discord::DiscordSession;
use twi_probe::probe::{Outcome, Probe, run_once};
use twi_sandbox::HttpFault;

use crate::discord::start_sandbox;

/// Log lines written while it is the default subscriber (this thread's:
/// `#[tokio::test]` runs every task on it).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn a_failed_cleanup_delete_is_logged_and_the_outcome_stands() {
    let log = Captured::default();
    let writer = log.clone();
    let _default = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .with_max_level(tracing::Level::WARN)
            .finish(),
    );
    let sb = start_sandbox(crate::discord_probes::sandbox_config(Default::default())).await;
    let d = sb.description().clone();
    let config = Config::from_yaml(
        &format!(
            "target: {{name: bot, user_id: \"{}\"}}\ndiscord: {{token_env: UNUSED_IN_TESTS, api_base: \"{}\"}}\nprobes:\n  - name: help\n    timeout: 5s\n    command: {{cleanup: true, channel_id: \"{}\", message: \"!help\", expect: {{embed_title: \"^Interactive Help System\"}}}}\n",
            sb.account("twi-bot-shard").unwrap().id,
            d.rest_base,
            sb.channel_id("probes").unwrap()
        ),
        Path::new("t.yaml"),
    )
    .unwrap();
    sb.control()
        .force_http(HttpFault {
            method: Some("DELETE".into()),
            path: "/channels/*/messages/*".into(),
            status: 500,
            duration: None,
            count: None,
        })
        .unwrap();
    let token = Secret::new(sb.account("prober").unwrap().token.clone());
    let session = Arc::new(DiscordSession::connect(&config, &token).await.unwrap());
    let probe = Arc::new(Probe::new(config.probes[0].clone(), Some(&session)).unwrap());
    let result = run_once(probe).await;
    assert_eq!(result.outcome, Outcome::Success, "{}", result.detail);
    let text = String::from_utf8(log.0.lock().unwrap().clone()).unwrap();
    assert!(
        text.lines().any(|l| l.contains("WARN")
            && l.contains("help")
            && l.contains("could not delete the probe message")),
        "no warning about the failed delete:\n{text}"
    );
    assert!(!text.contains(&token.expose().to_string()), "{text}");
    session.shutdown().await;
    sb.shutdown().await;
}
