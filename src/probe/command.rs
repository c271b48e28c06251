//! The `command` probe: send a message the bot answers, wait for its reply,
//! and judge it. Only the target's own messages can count.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serenity::all::{ChannelId, CreateMessage, MessageId, Nonce};
use serenity::http::HttpError;

use tokio::sync::mpsc;

use super::{Check, Outcome};
use crate::config::{CommandSpec, turns};
use crate::discord::correlate::{Incoming, ProbeEvent};
use crate::discord::turns::Turn;
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
    token: u64,
    timeout: Duration,
    answered: bool,
}

impl Drop for Finish {
    fn drop(&mut self) {
        self.session.correlator().finish(
            self.channel,
            self.token,
            self.answered,
            self.timeout,
            Instant::now(),
        );
    }
}

const UNATTRIBUTABLE: &str = "a reply without a message reference could not be attributed: an earlier probe in this channel had timed out and its reply may have come late";

fn inconclusive(detail: impl Into<String>) -> Check {
    Check::new(Outcome::Inconclusive, detail)
}

fn since_snowflake(later: SystemTime, earlier_id: u64) -> Option<Duration> {
    later.duration_since(snowflake::timestamp(earlier_id)).ok()
}

/// The reply's time by Discord's clock: its creation, or for an edit the
/// edit's time.
fn discord_time(reply: &Incoming, edit: bool) -> SystemTime {
    match (edit, reply.edited_at) {
        (true, Some(t)) => t,
        _ => snowflake::timestamp(reply.id),
    }
}

/// What a probe has seen in its channel while it waits for the reply.
#[derive(Default)]
struct Seen {
    typing_at: Option<Instant>,
    /// A reply that did not match (yet): perhaps a placeholder to be edited.
    placeholder: Option<u64>,
    wrong: Option<ReplyView>,
    foreign: usize,
    ambiguous: bool,
    echoed: bool,
    answered: bool,
    /// The bot's reply to this probe (for `cleanup`).
    reply: Option<u64>,
}

/// A sent probe message waiting for its reply.
struct Sent {
    probe_id: u64,
    start: Instant,
    deadline: Instant,
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

    /// The longest a run can take: waiting for the channel's turn, then its
    /// own turn (see `config::turns`), plus slack. Only a safety net: every
    /// step inside has its own bound.
    pub fn max_duration(&self) -> Duration {
        self.spec.turn_wait
            + turns::longest_turn(self.timeout, self.session.send_interval)
            + Duration::from_secs(5)
    }

    pub async fn check(&self) -> Check {
        let s = &self.session;
        let channel = self.spec.channel_id;
        if !s.is_connected() {
            return inconclusive(
                "the prober's own gateway connection to Discord is down; the bot was not probed",
            );
        }
        // Probes sharing a channel take turns, each until its result is
        // decided; waiting here is the prober's own delay, so it is neither
        // timed nor held against the bot.
        let queued = Instant::now();
        let Some(turn) = s.turns.take(channel, self.spec.turn_wait).await else {
            if self.spec.turn_wait.is_zero() {
                // A scrape's run (`GET /probe`) does not queue.
                return inconclusive(format!(
                    "channel busy: another probe's turn in channel {channel} is going (a run for a scrape does not wait for one); nothing was sent"
                ));
            }
            return inconclusive(format!(
                "channel busy: no turn in channel {channel} within {}, longer than the other probes there can take; the bot was not probed",
                format_wait(self.spec.turn_wait)
            ));
        };
        turn.send_budget(s.send_interval).await;
        // Sends across channels are spaced too, so that replies do not
        // queue inside the prober (see discord/send_gate.rs).
        s.send_gate.turn().await;
        let waited = queued.elapsed();
        let (mut check, sent) = self.take_turn(turn).await;
        if self.spec.cleanup
            && let Some((probe_id, reply)) = sent
        {
            self.clean_up(probe_id, reply).await;
        }
        if waited >= Duration::from_millis(1) {
            check.observations.waited = Some(waited);
        }
        check
    }

    /// `cleanup`: deletes the probe message, then the bot's reply, which
    /// needs Manage Messages in the channel. Best effort: a failure is
    /// logged (messages would otherwise pile up unseen), the run's outcome
    /// stays what the bot did.
    async fn clean_up(&self, probe_id: u64, reply: Option<u64>) {
        let channel = ChannelId::new(self.spec.channel_id);
        let targets =
            std::iter::once(("probe message", probe_id)).chain(reply.map(|id| ("bot's reply", id)));
        for (what, id) in targets {
            if let Err(e) = channel
                .delete_message(&self.session.http, MessageId::new(id))
                .await
            {
                let why = cleanup_error(&e);
                tracing::warn!(
                    probe = %self.name,
                    channel = channel.get(),
                    "cleanup could not delete the {what} {id}: {why}"
                );
            }
        }
    }

    /// Sends the probe message and waits for the result, holding the
    /// channel's turn until the result is decided. Returns the probe
    /// message's id when it was sent, with the bot's reply's.
    async fn take_turn(&self, mut turn: Turn) -> (Check, Option<(u64, Option<u64>)>) {
        let s = &self.session;
        let channel = self.spec.channel_id;
        let nonce = format!("{}", rand::random::<u64>() >> 1);
        let (token, mut events) = s.correlator().begin(channel, &self.name, &nonce);
        let mut finish = Finish {
            session: s.clone(),
            channel,
            token,
            timeout: self.timeout,
            answered: false,
        };
        let disconnects_before = s.disconnects();

        let start = Instant::now();
        let message = CreateMessage::new()
            .content(&self.spec.message)
            .nonce(Nonce::String(nonce))
            .enforce_nonce(true);
        let sent = tokio::time::timeout(
            turns::SEND_WAIT,
            ChannelId::new(channel).send_message(&s.http, message),
        )
        .await;
        turn.sent(start);
        let probe_message = match sent {
            Ok(Ok(m)) => m,
            Ok(Err(e)) => {
                // Refused (4xx): no message exists, so no reply can come late.
                if let serenity::Error::Http(HttpError::UnsuccessfulRequest(r)) = &e
                    && r.status_code.is_client_error()
                {
                    finish.answered = true;
                }
                return (self.send_failed(e), None);
            }
            Err(_) => {
                return (
                    inconclusive(format!(
                        "Discord did not accept the prober's message within {}; the bot was not probed",
                        format_wait(turns::SEND_WAIT)
                    )),
                    None,
                );
            }
        };
        let probe_id = probe_message.id.get();
        let late = s.correlator().sent(channel, probe_id);
        s.report_late(late);

        let sent = Sent {
            probe_id,
            start,
            deadline: start + self.timeout,
        };
        let mut seen = Seen::default();
        let mut check = loop {
            let event = match tokio::time::timeout_at(sent.deadline.into(), events.recv()).await {
                Ok(Some(e)) => e,
                Ok(None) => break Some(ended_elsewhere()),
                Err(_) => break None,
            };
            if let Some(check) = self.on_event(event, &sent, &mut seen, false) {
                break Some(check);
            }
        };
        if check.is_none() {
            check = Some(
                self.no_answer(&mut events, &sent, &mut seen, disconnects_before)
                    .await,
            );
        }
        let mut check = check.unwrap_or_else(ended_elsewhere);
        finish.answered = seen.answered;
        drop(finish);
        drop(turn);
        check.observations.probe_message_id = Some(probe_id);
        let foreign = seen.foreign;
        if foreign > 0 && check.outcome != Outcome::Success && check.outcome != Outcome::Timeout {
            check.detail.push_str(&format!(
                " ({foreign} messages from other accounts ignored)"
            ));
        }
        (check, Some((probe_id, seen.reply)))
    }

    /// Takes in one event of the probe's channel; returns the result once
    /// it is decided. After the deadline (`overtime`), only a reply that
    /// was in time by Discord's clock can still decide it.
    fn on_event(
        &self,
        event: ProbeEvent,
        sent: &Sent,
        seen: &mut Seen,
        overtime: bool,
    ) -> Option<Check> {
        match event {
            ProbeEvent::Typing { at } => {
                seen.typing_at.get_or_insert(at);
            }
            ProbeEvent::Foreign { .. } => seen.foreign += 1,
            ProbeEvent::Ambiguous => seen.ambiguous = true,
            ProbeEvent::OwnEcho => seen.echoed = true,
            ProbeEvent::Reply { message, at, edit } => {
                if overtime
                    && since_snowflake(discord_time(&message, edit), sent.probe_id)
                        .is_none_or(|d| d > self.timeout)
                {
                    return None;
                }
                seen.answered = true;
                return self.judge(message, at, edit, sent, seen);
            }
        }
        None
    }

    /// A reply (or an edit of one) from the target.
    fn judge(
        &self,
        message: Incoming,
        at: Instant,
        edit: bool,
        sent: &Sent,
        seen: &mut Seen,
    ) -> Option<Check> {
        // After an unreferenced reply was taken as an earlier probe's late
        // reply, another unreferenced one cannot be told apart either (an
        // edit of a reply this probe already had still can).
        let known = edit && seen.placeholder == Some(message.id);
        if seen.ambiguous && message.reference.is_none() && !known {
            return Some(inconclusive(UNATTRIBUTABLE));
        }
        seen.reply.get_or_insert(message.id);
        let view = &message.view;
        if view.is_blank() {
            return Some(inconclusive(
                "the bot replied, but the prober cannot read the reply (empty content and no embeds): \
                 it lacks the MESSAGE_CONTENT intent; enable the Message Content Intent for the prober \
                 in the Discord developer portal, or make the bot reply to (or mention) the prober",
            ));
        }
        if let Some(err) = &self.spec.error_reply
            && err.matches(view)
        {
            return Some(Check::new(
                Outcome::Failure,
                format!("the bot answered with its error reply: {}", view.quote()),
            ));
        }
        if self.spec.expect.matches(view) {
            return Some(self.success(
                sent.probe_id,
                &message,
                at,
                edit,
                sent.start,
                seen.typing_at,
                seen.placeholder,
            ));
        }
        // Not (yet) the answer: perhaps a placeholder it will edit.
        seen.placeholder.get_or_insert(message.id);
        seen.wrong = Some(view.clone());
        None
    }

    #[allow(clippy::too_many_arguments)]
    fn success(
        &self,
        probe_id: u64,
        reply: &Incoming,
        at: Instant,
        edit: bool,
        start: Instant,
        typing_at: Option<Instant>,
        placeholder: Option<u64>,
    ) -> Check {
        let latency = at.saturating_duration_since(start);
        // By Discord's clock: the reply's creation (or final edit) minus the probe's.
        let discord_reply = since_snowflake(discord_time(reply, edit), probe_id);
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
    /// gateway round trip now. Otherwise the run is inconclusive. Events
    /// keep coming meanwhile: a reply that Discord created within the
    /// timeout (by its own clock) but that was still on its way at the
    /// deadline is the bot's answer, not a timeout.
    async fn no_answer(
        &self,
        events: &mut mpsc::UnboundedReceiver<ProbeEvent>,
        sent: &Sent,
        seen: &mut Seen,
        disconnects_before: u64,
    ) -> Check {
        let s = &self.session;
        let guild = self
            .spec
            .guild_id
            .or_else(|| s.guild_of_channel(self.spec.channel_id));
        let ping = async {
            match guild {
                Some(g) => Some(
                    s.gateway_ping(g, turns::GATEWAY_PROOF_WAIT.min(self.timeout))
                        .await,
                ),
                None => None,
            }
        };
        tokio::pin!(ping);
        let answer = loop {
            tokio::select! {
                biased;
                event = events.recv() => match event {
                    Some(e) => {
                        if let Some(check) = self.on_event(e, sent, seen, true) {
                            return check;
                        }
                    }
                    None => return ended_elsewhere(),
                },
                answer = &mut ping => break answer,
            }
        };
        // Events handled before the answer but not yet taken.
        tokio::task::yield_now().await;
        while let Ok(e) = events.try_recv() {
            if let Some(check) = self.on_event(e, sent, seen, true) {
                return check;
            }
        }
        if let Some(view) = seen.wrong.take() {
            return Check::new(
                Outcome::Failure,
                format!(
                    "the bot's reply did not match what was expected: {}",
                    view.quote()
                ),
            );
        }
        if !seen.echoed || s.disconnects() != disconnects_before {
            return inconclusive(
                "no reply seen, but the prober's own gateway was not delivering events (it did not deliver the probe message itself), so a reply may have been missed",
            );
        }
        let online = match answer {
            Some(Ok(online)) => online,
            // Rate-limited is an answer: the gateway is delivering.
            Some(Err(PingError::RateLimited)) | None => None,
            Some(Err(PingError::NoAnswer)) => {
                return inconclusive(
                    "no reply seen, but the prober's own gateway stopped answering, so a reply may have been missed",
                );
            }
        };
        if seen.ambiguous {
            return inconclusive(UNATTRIBUTABLE);
        }
        Check::new(Outcome::Timeout, self.timeout_detail(seen.foreign, online))
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

/// The correlator ended this probe's wait: only another probe taking the
/// channel could do that, which turns rule out. Never the bot's fault.
fn ended_elsewhere() -> Check {
    inconclusive(
        "internal error: the probe's wait for its reply was ended by another probe in the channel",
    )
}

fn format_wait(d: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_millis(d.as_millis() as u64))
}

/// A failed delete, without the request URL (reqwest's errors carry it).
fn cleanup_error(e: &serenity::Error) -> String {
    match e {
        serenity::Error::Http(HttpError::UnsuccessfulRequest(r)) => {
            format!("HTTP {} {}", r.status_code.as_u16(), r.error.message)
        }
        serenity::Error::Http(HttpError::Request(e)) => super::describe_http_error(e),
        other => other.to_string(),
    }
}
