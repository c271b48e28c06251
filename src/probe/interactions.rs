//! The `interactions` probe (passive): real users' slash commands, by
//! Discord's clock. Each run reads the target's interaction responses the
//! prober's gateway saw since the last run (see `discord::interactions`):
//! `response` latency is the response message's snowflake time minus the
//! interaction's; `final` is a deferred response's final edit
//! (`edited_timestamp`, when LOADING is cleared) minus the interaction's.
//! Ephemeral responses never reach the prober, and interactions the bot
//! never answered leave no message: neither can be seen.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use super::{Check, InteractionObservation, Outcome};
use crate::config::InteractionsSpec;
use crate::discord::interactions::SeenResponse;
use crate::discord::{DiscordSession, InteractionReader};
use crate::snowflake;

/// Deferred responses awaiting their final edit, at most; and for at most
/// an interaction token's life (after that the bot can no longer edit).
const MAX_PENDING: usize = 1_000;
const TOKEN_LIFETIME: Duration = Duration::from_secs(15 * 60);

#[derive(Debug)]
pub struct InteractionsProbe {
    spec: InteractionsSpec,
    /// How long a run waits for a first complete response: the timeout.
    wait: Duration,
    session: Arc<DiscordSession>,
    /// This probe's place among the interaction log's readers.
    reader: InteractionReader,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    cursor: u64,
    /// Deferred responses by message id: (interaction id, command label).
    pending: HashMap<u64, (u64, String)>,
}

/// One response that is complete: original answered, or deferred and edited.
struct Done {
    latency: Duration,
    failed_reply: bool,
}

impl InteractionsProbe {
    pub fn new(spec: InteractionsSpec, wait: Duration, session: Arc<DiscordSession>) -> Self {
        let reader = session.interactions_reader();
        let cursor = reader.start;
        InteractionsProbe {
            spec,
            wait,
            session,
            reader,
            state: Mutex::new(State {
                cursor,
                ..State::default()
            }),
        }
    }

    fn watched(&self, r: &SeenResponse) -> bool {
        self.spec.channels.contains(&r.channel_id)
            || r.guild_id.is_some_and(|g| self.spec.guilds.contains(&g))
    }

    /// The runner's limit: the wait plus a margin; a prober-side overrun.
    pub fn max_duration(&self) -> Duration {
        self.wait + Duration::from_secs(2)
    }

    /// Reads the responses that arrived since the last read into `done`
    /// and `observations`.
    fn absorb(&self, done: &mut Vec<Done>, observations: &mut Vec<InteractionObservation>) -> u64 {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (seen, cursor, lost) = self.session.interactions_since(&self.reader, state.cursor);
        state.cursor = cursor;
        for r in seen.iter().filter(|r| self.watched(r) && !r.followup) {
            let label = self.spec.command_label(&r.command).to_string();
            let since_interaction = |at: SystemTime| {
                at.duration_since(snowflake::timestamp(r.interaction_id))
                    .unwrap_or_default()
            };
            let failed_reply = self
                .spec
                .error_reply
                .as_ref()
                .is_some_and(|m| m.matches(&r.view));
            if !r.update {
                let latency = since_interaction(snowflake::timestamp(r.message_id));
                observations.push(InteractionObservation::latency(&label, "response", latency));
                if r.loading {
                    state
                        .pending
                        .insert(r.message_id, (r.interaction_id, label));
                    if state.pending.len() > MAX_PENDING
                        && let Some(&oldest) = state.pending.keys().min()
                    {
                        state.pending.remove(&oldest);
                    }
                } else {
                    observations.push(InteractionObservation::outcome(&label, failed_reply));
                    done.push(Done {
                        latency,
                        failed_reply,
                    });
                }
            } else if !r.loading
                && let Some((_, label)) = state.pending.remove(&r.message_id)
            {
                let Some(edited) = r.edited_at else { continue };
                let latency = since_interaction(edited);
                observations.push(InteractionObservation::latency(&label, "final", latency));
                observations.push(InteractionObservation::outcome(&label, failed_reply));
                done.push(Done {
                    latency,
                    failed_reply,
                });
            }
        }
        lost
    }

    pub async fn check(&self) -> Check {
        let connected = self.session.is_connected();
        let mut observations = Vec::new();
        let mut done: Vec<Done> = Vec::new();
        // Nothing complete yet (a one-shot `probe run`, or a quiet spell):
        // wait up to the probe's timeout for the first complete response.
        let deadline = tokio::time::Instant::now() + self.wait;
        let mut lost = 0;
        loop {
            let seen = self.session.interaction_seen();
            tokio::pin!(seen);
            seen.as_mut().enable();
            lost += self.absorb(&mut done, &mut observations);
            if !done.is_empty() || !connected {
                break;
            }
            if tokio::time::timeout_at(deadline, seen).await.is_err() {
                break;
            }
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        // A deferred response whose token expired will never be finished:
        // the user saw "thinking..." until Discord gave up.
        let now = SystemTime::now();
        let expired: Vec<u64> = state
            .pending
            .iter()
            .filter(|(_, (iid, _))| {
                now.duration_since(snowflake::timestamp(*iid))
                    .unwrap_or_default()
                    > TOKEN_LIFETIME
            })
            .map(|(m, _)| *m)
            .collect();
        for m in &expired {
            if let Some((_, label)) = state.pending.remove(m) {
                observations.push(InteractionObservation::outcome(&label, true));
            }
        }
        let waiting = state.pending.len();
        drop(state);

        let mut check = summarise(&done, expired.len(), waiting, self.spec.max_latency);
        if !connected && check.outcome != Outcome::Failure {
            check = Check::new(
                Outcome::Inconclusive,
                "the prober's own gateway connection to Discord is down; responses unseen",
            );
        }
        if lost > 0 {
            check.detail.push_str(&format!(
                " ({lost} responses were lost: the prober fell behind)"
            ));
        }
        check.observations.latency = done.iter().map(|d| d.latency).max();
        check.observations.interactions = observations;
        check
    }
}

fn summarise(done: &[Done], expired: usize, waiting: usize, max: Option<Duration>) -> Check {
    let total = done.len() + expired;
    let errors = done.iter().filter(|d| d.failed_reply).count();
    let slow = max.map_or(0, |m| {
        done.iter()
            .filter(|d| !d.failed_reply && d.latency > m)
            .count()
    });
    let slowest = done.iter().map(|d| d.latency).max().unwrap_or_default();
    let waiting = if waiting > 0 {
        format!("; {waiting} deferred still thinking")
    } else {
        String::new()
    };
    if total == 0 {
        return Check::new(
            Outcome::Inconclusive,
            format!("no traffic: no slash-command responses seen since the last run{waiting}"),
        );
    }
    let failed = errors + slow + expired;
    if failed > 0 {
        let mut why = Vec::new();
        if errors > 0 {
            why.push(format!("{errors} error replies"));
        }
        if slow > 0 {
            why.push(format!(
                "{slow} slower than {}",
                humantime::format_duration(max.unwrap_or_default())
            ));
        }
        if expired > 0 {
            why.push(format!("{expired} deferred never finished"));
        }
        return Check::new(
            Outcome::Failure,
            format!(
                "{failed} of {total} responses failed ({}){waiting}",
                why.join(", ")
            ),
        );
    }
    Check::new(
        Outcome::Success,
        format!(
            "{total} responses, slowest {} ms{waiting}",
            slowest.as_millis()
        ),
    )
}
