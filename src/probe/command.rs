//! The `command` probe: send a message the bot answers, wait for its reply,
//! and judge it. Only the target's own messages can count.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serenity::all::{ChannelId, CreateMessage, MessageId, Nonce};

use super::{Check, Outcome};
use crate::config::CommandSpec;
use crate::discord::correlate::ProbeEvent;
use crate::discord::{DiscordSession, PingError};
use crate::probe::reply::ReplyView;
use crate::snowflake;

#[derive(Debug)]
pub struct CommandProbe {
    name: String,
    spec: CommandSpec,
    timeout: Duration,
    session: Arc<DiscordSession>,
}

/// Ends the probe in the correlator whatever way the check ends (also when
/// the runner drops it), so an unanswered probe is remembered as such.
struct Finish {
    session: Arc<DiscordSession>,
    channel: u64,
    timeout: Duration,
    answered: bool,
}

impl Drop for Finish {
    fn drop(&mut self) {
        self.session
            .correlator()
            .finish(self.channel, self.answered, self.timeout, Instant::now());
    }
}

/// How long a gateway round trip may take before the prober's gateway is
/// considered down.
const PING_WAIT: Duration = Duration::from_secs(5);

fn inconclusive(detail: impl Into<String>) -> Check {
    Check::new(Outcome::Inconclusive, detail)
}

fn since_snowflake(later: SystemTime, earlier_id: u64) -> Option<Duration> {
    later.duration_since(snowflake::timestamp(earlier_id)).ok()
}

impl CommandProbe {
    pub fn new(
        name: String,
        spec: CommandSpec,
        timeout: Duration,
        session: Arc<DiscordSession>,
    ) -> Self {
        CommandProbe {
            name,
            spec,
            timeout,
            session,
        }
    }

    /// The longest a run can take: waiting for the channel (at most one
    /// timeout), the send budget, and the reply (one timeout).
    pub fn max_duration(&self) -> Duration {
        self.timeout * 2 + self.session.send_interval + PING_WAIT + Duration::from_secs(5)
    }

    pub async fn check(&self) -> Check {
        let s = &self.session;
        let channel = self.spec.channel_id;
        if !s.is_connected() {
            return inconclusive(
                "the prober's own gateway connection to Discord is down; the bot was not probed",
            );
        }
        // Probes sharing a channel take turns; waiting here is the prober's
        // own delay, so it is neither timed nor held against the bot.
        let lock = s.channel_lock(channel);
        let Ok(mut last_send) = tokio::time::timeout(self.timeout, lock.lock()).await else {
            return inconclusive("channel busy: an earlier probe in this channel is still running");
        };
        if let Some(last) = *last_send {
            tokio::time::sleep_until((last + s.send_interval).into()).await;
        }
        // Sends across channels are spaced too, so that replies do not
        // queue inside the prober (see discord/send_gate.rs).
        s.send_gate.turn().await;
        let nonce = format!("{}", rand::random::<u64>() >> 1);
        let mut events = s.correlator().begin(channel, &self.name, &nonce);
        let mut finish = Finish {
            session: s.clone(),
            channel,
            timeout: self.timeout,
            answered: false,
        };
        let disconnects_before = s.disconnects();

        let start = Instant::now();
        let message = CreateMessage::new()
            .content(&self.spec.message)
            .nonce(Nonce::String(nonce))
            .enforce_nonce(true);
        let sent = ChannelId::new(channel).send_message(&s.http, message).await;
        *last_send = Some(start);
        drop(last_send);
        let probe_message = match sent {
            Ok(m) => m,
            Err(e) => return self.send_failed(e),
        };
        let probe_id = probe_message.id.get();
        let late = s.correlator().sent(channel, probe_id);
        s.report_late(late);

        let deadline = start + self.timeout;
        let mut typing_at: Option<Instant> = None;
        let mut placeholder: Option<u64> = None;
        let mut wrong: Option<ReplyView> = None;
        let mut foreign = 0usize;
        let mut ambiguous = false;
        let mut echoed = false;
        let check = loop {
            let event = match tokio::time::timeout_at(deadline.into(), events.recv()).await {
                Ok(Some(e)) => e,
                Ok(None) | Err(_) => break None,
            };
            match event {
                ProbeEvent::Typing { at } => {
                    typing_at.get_or_insert(at);
                }
                ProbeEvent::Foreign { .. } => foreign += 1,
                ProbeEvent::Ambiguous => ambiguous = true,
                ProbeEvent::OwnEcho => echoed = true,
                ProbeEvent::Reply { message, at, edit } => {
                    finish.answered = true;
                    let view = &message.view;
                    if view.is_blank() {
                        break Some(inconclusive(
                            "the bot replied, but the prober cannot read the reply (empty content and no embeds): \
                             it lacks the MESSAGE_CONTENT intent; enable the Message Content Intent for the prober \
                             in the Discord developer portal, or make the bot reply to (or mention) the prober",
                        ));
                    }
                    if let Some(err) = &self.spec.error_reply
                        && err.matches(view)
                    {
                        break Some(Check::new(
                            Outcome::Failure,
                            format!("the bot answered with its error reply: {}", view.quote()),
                        ));
                    }
                    if self.spec.expect.matches(view) {
                        break Some(self.success(
                            probe_id,
                            &message,
                            at,
                            edit,
                            start,
                            typing_at,
                            placeholder,
                        ));
                    }
                    // Not (yet) the answer: perhaps a placeholder it will edit.
                    placeholder.get_or_insert(message.id);
                    wrong = Some(view.clone());
                }
            }
        };
        let mut check = match check {
            Some(c) => c,
            None => {
                self.no_answer(wrong, echoed, ambiguous, foreign, disconnects_before)
                    .await
            }
        };
        drop(finish);
        if self.spec.cleanup {
            // Best effort; the prober may delete its own message only.
            let _ = ChannelId::new(channel)
                .delete_message(&s.http, MessageId::new(probe_id))
                .await;
        }
        if foreign > 0 && check.outcome != Outcome::Success && check.outcome != Outcome::Timeout {
            check.detail.push_str(&format!(
                " ({foreign} messages from other accounts ignored)"
            ));
        }
        check
    }

    #[allow(clippy::too_many_arguments)]
    fn success(
        &self,
        probe_id: u64,
        reply: &crate::discord::correlate::Incoming,
        at: Instant,
        edit: bool,
        start: Instant,
        typing_at: Option<Instant>,
        placeholder: Option<u64>,
    ) -> Check {
        let latency = at.saturating_duration_since(start);
        // By Discord's clock: the reply's creation (or final edit) minus the probe's.
        let reply_time = if edit {
            reply
                .edited_at
                .unwrap_or_else(|| snowflake::timestamp(reply.id))
        } else {
            snowflake::timestamp(reply.id)
        };
        let discord_reply = since_snowflake(reply_time, probe_id);
        // First sign of life: a placeholder (Discord's clock) or typing
        // (the prober's clock: Discord stamps typing in whole seconds).
        let first_response = match placeholder.or(edit.then_some(reply.id)) {
            Some(p) => since_snowflake(snowflake::timestamp(p), probe_id),
            None => typing_at
                .filter(|t| *t <= at)
                .map(|t| t.saturating_duration_since(start)),
        };
        let mut detail = format!("replied in {}", crate::report::format_seconds(latency));
        if let Some(d) = discord_reply {
            detail.push_str(&format!(
                " ({} by Discord's clock)",
                crate::report::format_seconds(d)
            ));
        }
        if let Some(f) = first_response {
            detail.push_str(&format!(
                ", first sign of life after {}",
                crate::report::format_seconds(f)
            ));
        }
        let mut check = Check::new(Outcome::Success, detail);
        check.observations.latency = Some(latency);
        check.observations.discord_reply = discord_reply;
        check.observations.first_response = first_response;
        check
    }

    /// The deadline passed without an acceptable reply. Before blaming the
    /// bot with a timeout, prove the prober's gateway was delivering events:
    /// it must have delivered the probe message itself, and must answer a
    /// gateway round trip now. Otherwise the run is inconclusive.
    async fn no_answer(
        &self,
        wrong: Option<ReplyView>,
        echoed: bool,
        ambiguous: bool,
        foreign: usize,
        disconnects_before: u64,
    ) -> Check {
        let s = &self.session;
        if let Some(view) = wrong {
            return Check::new(
                Outcome::Failure,
                format!(
                    "the bot's reply did not match what was expected: {}",
                    view.quote()
                ),
            );
        }
        if !echoed || s.disconnects() != disconnects_before {
            return inconclusive(
                "no reply seen, but the prober's own gateway was not delivering events (it did not deliver the probe message itself), so a reply may have been missed",
            );
        }
        let guild = self
            .spec
            .guild_id
            .or_else(|| s.guild_of_channel(self.spec.channel_id));
        let online = match guild {
            Some(g) => match s.gateway_ping(g, PING_WAIT.min(self.timeout)).await {
                Ok(online) => online,
                // Rate-limited is an answer: the gateway is delivering.
                Err(PingError::RateLimited) => None,
                Err(PingError::NoAnswer) => {
                    return inconclusive(
                        "no reply seen, but the prober's own gateway stopped answering, so a reply may have been missed",
                    );
                }
            },
            None => None,
        };
        if ambiguous {
            return inconclusive(
                "a reply without a message reference could not be attributed: an earlier probe in this channel had timed out and its reply may have come late",
            );
        }
        Check::new(Outcome::Timeout, self.timeout_detail(foreign, online))
    }

    fn timeout_detail(&self, foreign: usize, online: Option<bool>) -> String {
        let mut detail = format!(
            "no reply within {}",
            humantime::format_duration(self.timeout)
        );
        match online {
            Some(true) => detail.push_str("; the bot is online but not answering"),
            Some(false) => detail.push_str("; the bot is offline"),
            None => {}
        }
        if foreign > 0 {
            detail.push_str(&format!(
                " ({foreign} messages from other accounts were ignored: only the bot's own replies count)"
            ));
        }
        detail
    }

    fn send_failed(&self, e: serenity::Error) -> Check {
        use serenity::http::HttpError;
        let channel = self.spec.channel_id;
        match e {
            serenity::Error::Http(HttpError::UnsuccessfulRequest(r)) => {
                let status = r.status_code.as_u16();
                let code = r.error.code;
                match (status, code) {
                    (429, _) => {
                        self.session.note_ratelimited();
                        inconclusive(
                            "Discord rate-limited the prober's message (429); the bot was not probed",
                        )
                    }
                    (500..=599, _) => inconclusive(format!(
                        "Discord answered HTTP {status} to the prober's message; the bot was not probed"
                    )),
                    (401, _) => inconclusive("Discord rejected the prober's token (401)"),
                    (403, 50001) => Check::new(
                        Outcome::Unreachable,
                        format!(
                            "the prober cannot see channel {channel} (403 Missing Access): give it View Channel there"
                        ),
                    ),
                    (403, 50013) => Check::new(
                        Outcome::Unreachable,
                        format!(
                            "the prober may not post in channel {channel} (403 Missing Permissions): give it Send Messages there"
                        ),
                    ),
                    (403, _) => Check::new(
                        Outcome::Unreachable,
                        format!(
                            "Discord refused the prober's message in channel {channel} (403, code {code})"
                        ),
                    ),
                    (404, _) => Check::new(
                        Outcome::Unreachable,
                        format!("channel {channel} does not exist (404 Unknown Channel)"),
                    ),
                    _ => inconclusive(format!(
                        "Discord refused the prober's message (HTTP {status}, code {code}: {})",
                        r.error.message
                    )),
                }
            }
            serenity::Error::Http(HttpError::Request(e)) => inconclusive(format!(
                "cannot reach Discord's API: {}",
                super::describe_http_error(&e)
            )),
            other => inconclusive(format!("sending the probe message failed: {other}")),
        }
    }
}
