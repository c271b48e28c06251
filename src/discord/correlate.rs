//! Which message is the target bot's reply to which probe.
//!
//! Rules, per channel (probes sharing a channel take turns until their
//! result is decided, so at most one is in flight):
//! - only messages authored by the target's user id, and not by a webhook,
//!   can be replies; anything else is reported as foreign and never counts;
//! - a reply that references the probe message matches it;
//! - a reply that references an earlier probe that timed out is a late
//!   reply to that probe (kept for [`REFERENCED_LATE_WINDOW`]);
//! - a reply without a reference matches the in-flight probe if it was
//!   created after the probe message, unless an earlier probe timed out
//!   less than its timeout ago: then it is taken as that probe's late
//!   reply (counted once per probe), and the in-flight probe is told its
//!   attribution is ambiguous: it can no longer succeed on an unreferenced
//!   reply.
//!
//! Events can arrive before the probe's own message id is known (serenity
//! handles events concurrently, and the reply can beat the HTTP response):
//! those wait until [`Correlator::sent`] names the id.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::mpsc;

use crate::probe::reply::ReplyView;

/// How long a timed-out probe still accepts replies that reference it.
pub const REFERENCED_LATE_WINDOW: Duration = Duration::from_secs(600);
/// Timed-out probes remembered per channel.
const MAX_OUTSTANDING: usize = 32;

/// A message as the correlator needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Incoming {
    pub id: u64,
    pub author_id: u64,
    pub from_webhook: bool,
    pub nonce: Option<String>,
    pub reference: Option<u64>,
    pub view: ReplyView,
    /// Discord's edit time, for MESSAGE_UPDATE.
    pub edited_at: Option<SystemTime>,
}

/// What the in-flight probe is told.
#[derive(Debug, Clone, PartialEq)]
pub enum ProbeEvent {
    /// A reply (or an edit of one) from the target, seen at `at`.
    Reply {
        message: Incoming,
        at: Instant,
        edit: bool,
    },
    /// The target started typing.
    Typing { at: Instant },
    /// A message from someone else in the channel; it never counts.
    Foreign { author_id: u64, from_webhook: bool },
    /// An unreferenced reply was taken as an earlier probe's late reply.
    Ambiguous,
    /// The gateway delivered the probe message itself: events were flowing.
    OwnEcho,
}

/// A late reply to a probe that had timed out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LateReply {
    pub probe: String,
}

struct Inflight {
    /// Tells this probe's `finish` from a later probe's.
    token: u64,
    probe: String,
    nonce: String,
    message_id: Option<u64>,
    tx: mpsc::UnboundedSender<ProbeEvent>,
    /// Replies delivered, so their edits follow them.
    delivered: HashSet<u64>,
    /// Messages that waited for `message_id`.
    pending: Vec<(Incoming, Instant, bool)>,
}

struct Outstanding {
    probe: String,
    message_id: Option<u64>,
    unreferenced_until: Instant,
    referenced_until: Instant,
    /// An unreferenced reply was already taken as this probe's late reply
    /// (a guess: the entry stays, so later ones are not taken as the
    /// in-flight probe's either; it is counted once).
    claimed: bool,
}

#[derive(Default)]
struct ChannelState {
    inflight: Option<Inflight>,
    outstanding: VecDeque<Outstanding>,
}

/// Routes channel events to the probe in flight there.
pub struct Correlator {
    target_id: u64,
    prober_id: u64,
    channels: HashMap<u64, ChannelState>,
    next_token: u64,
}

impl Correlator {
    pub fn new(target_id: u64, prober_id: u64) -> Self {
        Correlator {
            target_id,
            prober_id,
            channels: HashMap::new(),
            next_token: 0,
        }
    }

    pub fn set_prober_id(&mut self, id: u64) {
        self.prober_id = id;
    }

    /// Starts a probe in `channel`; the caller holds the channel's turn.
    /// Returns the token that ends it in [`Correlator::finish`] and the
    /// probe's events. The events end (`None`) only if the probe was ended
    /// by something else than its own `finish`, which turns rule out.
    pub fn begin(
        &mut self,
        channel: u64,
        probe: &str,
        nonce: &str,
    ) -> (u64, mpsc::UnboundedReceiver<ProbeEvent>) {
        let (tx, rx) = mpsc::unbounded_channel();
        self.next_token += 1;
        let token = self.next_token;
        self.channels.entry(channel).or_default().inflight = Some(Inflight {
            token,
            probe: probe.to_string(),
            nonce: nonce.to_string(),
            message_id: None,
            tx,
            delivered: HashSet::new(),
            pending: Vec::new(),
        });
        (token, rx)
    }

    /// The probe message was created with this id.
    pub fn sent(&mut self, channel: u64, message_id: u64) -> Vec<LateReply> {
        let Some(state) = self.channels.get_mut(&channel) else {
            return vec![];
        };
        let Some(inflight) = &mut state.inflight else {
            return vec![];
        };
        if inflight.message_id.is_some() {
            return vec![];
        }
        inflight.message_id = Some(message_id);
        let pending = std::mem::take(&mut inflight.pending);
        pending
            .into_iter()
            .filter_map(|(m, at, edit)| self.on_message(channel, m, at, edit))
            .collect()
    }

    /// Ends the probe in `channel`. Unanswered probes are remembered, so a
    /// late reply is recognised and never matched to a later probe.
    /// Only the probe holding `token` is ended: a finish can never end a
    /// later probe's wait.
    pub fn finish(
        &mut self,
        channel: u64,
        token: u64,
        answered: bool,
        timeout: Duration,
        now: Instant,
    ) {
        let Some(state) = self.channels.get_mut(&channel) else {
            return;
        };
        if state.inflight.as_ref().is_none_or(|i| i.token != token) {
            return;
        }
        let Some(inflight) = state.inflight.take() else {
            return;
        };
        if !answered {
            state.outstanding.push_back(Outstanding {
                probe: inflight.probe,
                message_id: inflight.message_id,
                unreferenced_until: now + timeout,
                referenced_until: now + REFERENCED_LATE_WINDOW,
                claimed: false,
            });
            while state.outstanding.len() > MAX_OUTSTANDING {
                state.outstanding.pop_front();
            }
        }
    }

    pub fn on_typing(&mut self, channel: u64, user_id: u64, at: Instant) {
        if user_id != self.target_id {
            return;
        }
        if let Some(inflight) = self
            .channels
            .get(&channel)
            .and_then(|s| s.inflight.as_ref())
        {
            let _ = inflight.tx.send(ProbeEvent::Typing { at });
        }
    }

    /// A MESSAGE_CREATE (`edit` false) or MESSAGE_UPDATE (`edit` true).
    pub fn on_message(
        &mut self,
        channel: u64,
        m: Incoming,
        at: Instant,
        edit: bool,
    ) -> Option<LateReply> {
        let (target, prober) = (self.target_id, self.prober_id);
        let state = self.channels.get_mut(&channel)?;
        state
            .outstanding
            .retain(|o| o.referenced_until > at || o.unreferenced_until > at);

        if m.author_id == prober && !m.from_webhook {
            let Some(i) = &state.inflight else {
                return None;
            };
            let by_nonce = m.nonce.as_deref() == Some(i.nonce.as_str());
            if by_nonce || i.message_id == Some(m.id) {
                let _ = i.tx.send(ProbeEvent::OwnEcho);
            }
            // The echo of our own message can tell its id early.
            if by_nonce && i.message_id.is_none() {
                return self.sent(channel, m.id).into_iter().next();
            }
            return None;
        }
        if m.author_id != target || m.from_webhook {
            if let Some(i) = &state.inflight {
                let _ = i.tx.send(ProbeEvent::Foreign {
                    author_id: m.author_id,
                    from_webhook: m.from_webhook,
                });
            }
            return None;
        }

        if let Some(inflight) = &mut state.inflight {
            if inflight.delivered.contains(&m.id) {
                let _ = inflight.tx.send(ProbeEvent::Reply {
                    message: m,
                    at,
                    edit,
                });
                return None;
            }
            if inflight.message_id.is_none() {
                inflight.pending.push((m, at, edit));
                return None;
            }
        }
        let probe_id = state.inflight.as_ref().and_then(|i| i.message_id);

        if let Some(reference) = m.reference {
            if probe_id == Some(reference) {
                return deliver(state, m, at, edit);
            }
            let late = state
                .outstanding
                .iter()
                .position(|o| o.message_id == Some(reference) && o.referenced_until > at)?;
            let o = state.outstanding.remove(late)?;
            return (!o.claimed).then_some(LateReply { probe: o.probe });
        }

        // No reference: while an earlier unanswered probe may still get its
        // late reply, an unreferenced one cannot be told apart. It is taken
        // as the earliest such probe's (counted once per probe), and the
        // in-flight probe is told it cannot attribute unreferenced replies.
        if let Some(o) = state
            .outstanding
            .iter_mut()
            .find(|o| o.unreferenced_until > at)
        {
            if let Some(i) = &state.inflight {
                let _ = i.tx.send(ProbeEvent::Ambiguous);
            }
            let first = !o.claimed;
            o.claimed = true;
            return first.then(|| LateReply {
                probe: o.probe.clone(),
            });
        }
        match probe_id {
            Some(pid) if m.id > pid => deliver(state, m, at, edit),
            _ => None,
        }
    }
}

fn deliver(state: &mut ChannelState, m: Incoming, at: Instant, edit: bool) -> Option<LateReply> {
    if let Some(i) = &mut state.inflight {
        i.delivered.insert(m.id);
        let _ = i.tx.send(ProbeEvent::Reply {
            message: m,
            at,
            edit,
        });
    }
    None
}

#[cfg(test)]
mod model_tests;

#[cfg(test)]
mod tests {
    use super::*;

    const TARGET: u64 = 100;
    const PROBER: u64 = 200;
    const CH: u64 = 7;

    fn msg(id: u64, author: u64, reference: Option<u64>) -> Incoming {
        Incoming {
            id,
            author_id: author,
            from_webhook: false,
            nonce: None,
            reference,
            view: ReplyView {
                content: format!("m{id}"),
                embeds: vec![],
            },
            edited_at: None,
        }
    }

    fn next(rx: &mut mpsc::UnboundedReceiver<ProbeEvent>) -> Option<ProbeEvent> {
        rx.try_recv().ok()
    }

    #[test]
    fn referenced_and_unreferenced_replies_match_the_probe() {
        let mut c = Correlator::new(TARGET, PROBER);
        let now = Instant::now();
        let (tok, mut rx) = c.begin(CH, "p", "n1");
        c.sent(CH, 10);
        assert_eq!(
            c.on_message(CH, msg(11, TARGET, Some(10)), now, false),
            None
        );
        assert!(
            matches!(next(&mut rx), Some(ProbeEvent::Reply { message, .. }) if message.id == 11)
        );
        c.finish(CH, tok, true, Duration::from_secs(5), now);

        let (_tok, mut rx) = c.begin(CH, "p", "n2");
        c.sent(CH, 20);
        c.on_message(CH, msg(21, TARGET, None), now, false);
        assert!(
            matches!(next(&mut rx), Some(ProbeEvent::Reply { message, .. }) if message.id == 21)
        );
        // An edit of a delivered reply follows it.
        c.on_message(CH, msg(21, TARGET, None), now, true);
        assert!(matches!(
            next(&mut rx),
            Some(ProbeEvent::Reply { edit: true, .. })
        ));
    }

    #[test]
    fn only_the_target_can_reply() {
        let mut c = Correlator::new(TARGET, PROBER);
        let now = Instant::now();
        let (_tok, mut rx) = c.begin(CH, "p", "n");
        c.sent(CH, 10);
        c.on_message(CH, msg(11, 555, Some(10)), now, false);
        assert_eq!(
            next(&mut rx),
            Some(ProbeEvent::Foreign {
                author_id: 555,
                from_webhook: false
            })
        );
        let mut hook = msg(12, TARGET, Some(10));
        hook.from_webhook = true;
        c.on_message(CH, hook, now, false);
        assert!(matches!(
            next(&mut rx),
            Some(ProbeEvent::Foreign {
                from_webhook: true,
                ..
            })
        ));
        assert_eq!(next(&mut rx), None);
    }

    #[test]
    fn a_reply_before_the_id_is_known_waits_for_it() {
        let mut c = Correlator::new(TARGET, PROBER);
        let now = Instant::now();
        let (_tok, mut rx) = c.begin(CH, "p", "n");
        c.on_message(CH, msg(11, TARGET, Some(10)), now, false);
        assert_eq!(next(&mut rx), None);
        // Our own echo (with the nonce) names the id.
        let mut echo = msg(10, PROBER, None);
        echo.nonce = Some("n".into());
        c.on_message(CH, echo, now, false);
        assert_eq!(next(&mut rx), Some(ProbeEvent::OwnEcho));
        assert!(
            matches!(next(&mut rx), Some(ProbeEvent::Reply { message, at, .. }) if message.id == 11 && at == now)
        );
    }

    #[test]
    fn a_late_reply_is_never_matched_to_the_next_probe() {
        let mut c = Correlator::new(TARGET, PROBER);
        let t0 = Instant::now();
        let timeout = Duration::from_secs(5);
        let (tok, _rx) = c.begin(CH, "p", "n1");
        c.sent(CH, 10);
        c.finish(CH, tok, false, timeout, t0);

        let (_tok, mut rx) = c.begin(CH, "p", "n2");
        c.sent(CH, 20);
        // The late reply references the first probe.
        let late = c.on_message(
            CH,
            msg(21, TARGET, Some(10)),
            t0 + Duration::from_secs(1),
            false,
        );
        assert_eq!(late, Some(LateReply { probe: "p".into() }));
        assert_eq!(next(&mut rx), None);
        // Then the real one.
        c.on_message(
            CH,
            msg(22, TARGET, Some(20)),
            t0 + Duration::from_secs(1),
            false,
        );
        assert!(
            matches!(next(&mut rx), Some(ProbeEvent::Reply { message, .. }) if message.id == 22)
        );
    }

    #[test]
    fn an_unreferenced_reply_after_a_timeout_is_late_and_flags_ambiguity() {
        let mut c = Correlator::new(TARGET, PROBER);
        let t0 = Instant::now();
        let timeout = Duration::from_secs(5);
        let (tok, _rx) = c.begin(CH, "a", "n1");
        c.sent(CH, 10);
        c.finish(CH, tok, false, timeout, t0);
        let (_tok, mut rx) = c.begin(CH, "b", "n2");
        c.sent(CH, 20);
        let late = c.on_message(
            CH,
            msg(21, TARGET, None),
            t0 + Duration::from_secs(1),
            false,
        );
        assert_eq!(late, Some(LateReply { probe: "a".into() }));
        assert_eq!(next(&mut rx), Some(ProbeEvent::Ambiguous));
        // The next one cannot be told apart either (it may be the real late
        // reply): ambiguous again, and the late reply is counted once.
        let again = c.on_message(
            CH,
            msg(22, TARGET, None),
            t0 + Duration::from_secs(2),
            false,
        );
        assert_eq!(again, None);
        assert_eq!(next(&mut rx), Some(ProbeEvent::Ambiguous));
        // A referenced reply still matches.
        c.on_message(
            CH,
            msg(23, TARGET, Some(20)),
            t0 + Duration::from_secs(2),
            false,
        );
        assert!(
            matches!(next(&mut rx), Some(ProbeEvent::Reply { message, .. }) if message.id == 23)
        );
    }

    #[test]
    fn after_the_window_unreferenced_replies_belong_to_the_new_probe() {
        let mut c = Correlator::new(TARGET, PROBER);
        let t0 = Instant::now();
        let (tok, _rx) = c.begin(CH, "a", "n1");
        c.sent(CH, 10);
        c.finish(CH, tok, false, Duration::from_secs(5), t0);
        let (tok, mut rx) = c.begin(CH, "b", "n2");
        c.sent(CH, 20);
        c.on_message(
            CH,
            msg(21, TARGET, None),
            t0 + Duration::from_secs(6),
            false,
        );
        assert!(matches!(next(&mut rx), Some(ProbeEvent::Reply { .. })));
        // A reply older than the probe message is not its reply.
        let (_tok, mut rx) = {
            c.finish(CH, tok, true, Duration::from_secs(5), t0);
            c.begin(CH, "b", "n3")
        };
        c.sent(CH, 30);
        c.on_message(
            CH,
            msg(25, TARGET, None),
            t0 + Duration::from_secs(7),
            false,
        );
        assert_eq!(next(&mut rx), None);
    }

    #[test]
    fn typing_from_the_target_is_forwarded() {
        let mut c = Correlator::new(TARGET, PROBER);
        let now = Instant::now();
        let (_tok, mut rx) = c.begin(CH, "p", "n");
        c.on_typing(CH, 555, now);
        c.on_typing(CH, TARGET, now);
        assert_eq!(next(&mut rx), Some(ProbeEvent::Typing { at: now }));
        assert_eq!(next(&mut rx), None);
    }
}
