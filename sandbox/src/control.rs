//! Fault control and ground truth: Rust methods for tests, and the same
//! over HTTP under `/_sandbox/` for anything else.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{Value, json};

use super::Description;
use super::bot::{BotBehaviour, SimBot};
use super::faults::HttpFault;
use super::gateway;
use super::hub::Core;
use super::interactions::{InteractionTruth, RunCommand};
use super::truth::MessageTruth;

pub struct Controls {
    pub(super) core: Arc<Core>,
    pub(super) bot: Option<Arc<SimBot>>,
}

impl Controls {
    fn account_id(&self, name: &str) -> Result<u64, String> {
        self.core
            .state()
            .world
            .account_id(name)
            .ok_or_else(|| format!("no account named {name:?}"))
    }

    /// Closes the account's gateway connections with `code`.
    pub fn close_gateway(&self, account: &str, code: u16) -> Result<usize, String> {
        let id = self.account_id(account)?;
        self.core
            .log_event(&format!("control: close {account}'s gateway with {code}"));
        Ok(gateway::close_account(&self.core, id, code))
    }

    /// Sends op 7 RECONNECT to the account's connections.
    pub fn send_reconnect(&self, account: &str) -> Result<usize, String> {
        let id = self.account_id(account)?;
        self.core
            .log_event(&format!("control: op 7 RECONNECT to {account}"));
        Ok(gateway::reconnect_account(&self.core, id))
    }

    /// Sends op 9 INVALID_SESSION to the account's sessions and ends them.
    pub fn invalidate_session(&self, account: &str) -> Result<usize, String> {
        let id = self.account_id(account)?;
        self.core
            .log_event(&format!("control: op 9 INVALID_SESSION to {account}"));
        Ok(gateway::invalidate_account(&self.core, id))
    }

    /// Stops (or resumes) acknowledging the account's heartbeats.
    pub fn set_heartbeat_acks(&self, account: &str, enabled: bool) -> Result<(), String> {
        let id = self.account_id(account)?;
        self.core
            .log_event(&format!("control: heartbeat ACKs for {account}: {enabled}"));
        self.core.faults.set_heartbeat_acks(id, enabled);
        Ok(())
    }

    /// A gateway outage for the account: its connections are closed (4000,
    /// resumable) and its IDENTIFY and RESUME refused until lifted.
    pub fn set_gateway_outage(&self, account: &str, down: bool) -> Result<(), String> {
        let id = self.account_id(account)?;
        self.core
            .log_event(&format!("control: gateway outage for {account}: {down}"));
        self.core.faults.set_gateway_refused(id, down);
        if down {
            gateway::close_account(&self.core, id, 4000);
        }
        Ok(())
    }

    /// IDENTIFY and RESUME attempts refused since the account's gateway
    /// outage began (`None`: no outage): how hard a client retries.
    pub fn refused_attempts(&self, account: &str) -> Result<Option<u64>, String> {
        let id = self.account_id(account)?;
        Ok(self.core.faults.refused_attempts(id))
    }

    pub fn is_connected(&self, account: &str) -> Result<bool, String> {
        let id = self.account_id(account)?;
        Ok(gateway::is_connected(&self.core, id))
    }

    /// Forces 429s or 5xx answers on a route.
    pub fn force_http(&self, fault: HttpFault) -> Result<(), String> {
        self.core.log_event(&format!(
            "control: force {} on {:?} {}",
            fault.status, fault.method, fault.path
        ));
        self.core.faults.add_http(fault)
    }

    pub fn clear_faults(&self) {
        self.core.log_event("control: faults cleared");
        self.core.faults.clear();
    }

    /// Ground truth for one message.
    pub fn truth(&self, message_id: u64) -> Option<MessageTruth> {
        self.core.truth.message(message_id)
    }

    /// Ground truth for a channel's messages, oldest first.
    pub fn truths(&self, channel_id: Option<u64>) -> Vec<MessageTruth> {
        self.core.truth.messages(channel_id)
    }

    /// A human runs a slash command (`/command` in `channel`): the
    /// application that registered it gets INTERACTION_CREATE. Returns the
    /// interaction's id.
    pub fn run_command(&self, cmd: &RunCommand) -> Result<u64, String> {
        super::interactions::run(&self.core, cmd)
    }

    /// A human account and a channel it can see (`guild/channel`), at random.
    pub fn random_user_and_channel(&self) -> Option<(String, String)> {
        let state = self.core.state();
        let w = &state.world;
        let mut pairs = Vec::new();
        for a in w.accounts.iter().filter(|a| !a.bot) {
            for g in w.guilds.iter().filter(|g| g.members.contains(&a.id)) {
                for c in g.channels.iter().filter_map(|c| w.channels.get(c)) {
                    if w.can_view(c, a.id) {
                        pairs.push((a.name.clone(), format!("{}/{}", g.name, c.name)));
                    }
                }
            }
        }
        if pairs.is_empty() {
            return None;
        }
        Some(pairs.swap_remove(rand::random_range(0..pairs.len())))
    }

    /// Ground truth for interactions, oldest first (the newest
    /// `retention.truth_records`).
    pub fn interaction_truths(&self) -> Vec<InteractionTruth> {
        self.core.interactions.truth()
    }

    /// How many interactions still hold a valid token.
    pub fn live_interactions(&self) -> usize {
        self.core.interactions.live_count()
    }

    /// The simulated bot, when it runs.
    pub fn bot(&self) -> Option<&Arc<SimBot>> {
        self.bot.as_ref()
    }

    fn sim_bot(&self) -> Result<&Arc<SimBot>, String> {
        self.bot
            .as_ref()
            .ok_or_else(|| "the simulated bot is disabled (bot.enabled: false)".to_string())
    }

    /// Changes how the simulated bot behaves, at once.
    pub fn set_bot_behaviour(&self, b: BotBehaviour) -> Result<(), String> {
        let bot = self.sim_bot()?;
        self.core
            .log_event(&format!("control: bot behaviour {b:?}"));
        bot.set_behaviour(b);
        Ok(())
    }

    /// Changes only the fields of the bot's behaviour that `patch` (a JSON
    /// object, as `POST /bot/behaviour` takes it) names; the others keep
    /// their current values (a test that slows the bot keeps its error
    /// rate). Returns the behaviour now in force.
    pub fn merge_bot_behaviour(&self, patch: serde_json::Value) -> Result<BotBehaviour, String> {
        let bot = self.sim_bot()?;
        let serde_json::Value::Object(fields) = patch else {
            return Err("the behaviour must be a JSON object".into());
        };
        let mut merged = serde_json::to_value(bot.behaviour()).map_err(|e| e.to_string())?;
        if let serde_json::Value::Object(current) = &mut merged {
            current.extend(fields);
        }
        let b: BotBehaviour = serde_json::from_value(merged).map_err(|e| e.to_string())?;
        self.set_bot_behaviour(b.clone())?;
        Ok(b)
    }

    /// Takes the simulated bot offline: it closes its gateway connection
    /// cleanly, so its presence goes offline at once.
    pub async fn bot_offline(&self) -> Result<(), String> {
        let bot = self.sim_bot()?;
        self.core.log_event("control: bot offline");
        bot.go_offline().await;
        Ok(())
    }

    /// A spontaneous outage of `probe serve --sandbox`'s bot (not asked
    /// for over the control API), logged as such.
    pub async fn simulated_outage_start(&self, lasts: std::time::Duration) -> Result<(), String> {
        let bot = self.sim_bot()?;
        self.core.log_event(&format!(
            "simulated outage: the bot goes offline for {} (spontaneous; --sandbox-outages)",
            humantime::format_duration(lasts)
        ));
        self.log_replay_size();
        bot.go_offline().await;
        Ok(())
    }

    /// At debug level: what the replay buffers hold, which an outage
    /// changes (the bot's session ends, and its new one refills).
    fn log_replay_size(&self) {
        let (dispatches, bytes) = self.core.state().replay_size();
        tracing::debug!(
            target: "twi_sandbox",
            "replay buffers: {dispatches} dispatches, {bytes} bytes of payloads"
        );
    }

    pub async fn simulated_outage_end(&self) -> Result<(), String> {
        let bot = self.sim_bot()?;
        self.log_replay_size();
        self.core
            .log_event("simulated outage over: the bot comes back online");
        bot.go_online().await
    }

    pub async fn bot_online(&self) -> Result<(), String> {
        let bot = self.sim_bot()?;
        self.core.log_event("control: bot online");
        bot.go_online().await
    }

    /// Restarts the simulated bot like a process restart: reconnects, and
    /// its exporter's start time and counters reset.
    pub async fn bot_restart(&self) -> Result<(), String> {
        let bot = self.sim_bot()?;
        self.core.log_event("control: bot restart");
        bot.restart().await
    }
}

type Ctl = State<(Arc<Controls>, Arc<Description>)>;

fn done(r: Result<impl serde::Serialize, String>) -> Response {
    match r {
        Ok(v) => Json(json!({"ok": true, "result": v})).into_response(),
        Err(e) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"ok": false, "error": e})),
        )
            .into_response(),
    }
}

#[derive(Deserialize)]
struct CloseBody {
    code: u16,
}

#[derive(Deserialize)]
struct AcksBody {
    enabled: bool,
}

#[derive(Deserialize)]
struct TruthQuery {
    channel_id: Option<u64>,
}

/// The HTTP control API. Every change takes effect at once and is logged.
pub fn router(controls: Arc<Controls>, description: Description) -> Router {
    Router::new()
        .route("/describe", get(|State((_, d)): Ctl| async move { Json((*d).clone()) }))
        .route(
            "/gateway/{account}/close",
            post(|State((c, _)): Ctl, Path(account): Path<String>, Json(b): Json<CloseBody>| async move {
                done(c.close_gateway(&account, b.code))
            }),
        )
        .route(
            "/gateway/{account}/reconnect",
            post(|State((c, _)): Ctl, Path(account): Path<String>| async move { done(c.send_reconnect(&account)) }),
        )
        .route(
            "/gateway/{account}/invalidate",
            post(|State((c, _)): Ctl, Path(account): Path<String>| async move { done(c.invalidate_session(&account)) }),
        )
        .route(
            "/gateway/{account}/heartbeat-acks",
            post(|State((c, _)): Ctl, Path(account): Path<String>, Json(b): Json<AcksBody>| async move {
                done(c.set_heartbeat_acks(&account, b.enabled))
            }),
        )
        .route(
            "/gateway/{account}/outage",
            post(|State((c, _)): Ctl, Path(account): Path<String>, Json(b): Json<AcksBody>| async move {
                done(c.set_gateway_outage(&account, b.enabled))
            }),
        )
        .route(
            "/faults/http",
            post(|State((c, _)): Ctl, Json(f): Json<HttpFault>| async move { done(c.force_http(f)) }),
        )
        .route(
            "/faults/clear",
            post(|State((c, _)): Ctl| async move {
                c.clear_faults();
                done(Ok(()))
            }),
        )
        .route(
            "/bot/behaviour",
            get(|State((c, _)): Ctl| async move { done(c.sim_bot().map(|b| b.behaviour())) })
                .post(|State((c, _)): Ctl, Json(patch): Json<Value>| async move { done(c.merge_bot_behaviour(patch)) }),
        )
        .route("/bot/offline", post(|State((c, _)): Ctl| async move { done(c.bot_offline().await) }))
        .route("/bot/online", post(|State((c, _)): Ctl| async move { done(c.bot_online().await) }))
        .route("/bot/restart", post(|State((c, _)): Ctl| async move { done(c.bot_restart().await) }))
        .route(
            "/interactions",
            post(|State((c, _)): Ctl, Json(b): Json<RunCommand>| async move {
                done(c.run_command(&b).map(|id| json!({"id": id.to_string()})))
            }),
        )
        .route(
            "/truth/interactions",
            get(|State((c, _)): Ctl| async move {
                let records: Vec<_> = c.interaction_truths().iter().map(|r| r.to_json()).collect();
                Json(records)
            }),
        )
        .route(
            "/truth/messages",
            get(|State((c, _)): Ctl, Query(q): Query<TruthQuery>| async move {
                let records: Vec<_> = c.truths(q.channel_id).iter().map(|r| c.core.truth.to_json(r)).collect();
                Json(records)
            }),
        )
        .route(
            "/truth/messages/{id}",
            get(|State((c, _)): Ctl, Path(id): Path<u64>| async move {
                match c.truth(id) {
                    Some(r) => Json(c.core.truth.to_json(&r)).into_response(),
                    None => (StatusCode::NOT_FOUND, Json(json!({"ok": false, "error": "no such message"}))).into_response(),
                }
            }),
        )
        .with_state((controls, Arc::new(description)))
}
