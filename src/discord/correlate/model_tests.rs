//! Model-based test of the correlator: random interleavings of probes taking
//! turns in several channels, their sends and echoes, the bot's replies with
//! and without references (on time, slow, late, placeholders edited later),
//! messages from other accounts and webhooks, and stale `finish` calls,
//! checked against what we know each message was meant for.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

use super::*;

const TARGET: u64 = 100;
const PROBER: u64 = 200;
const STRANGER: u64 = 300;

#[derive(Debug, Clone)]
struct ReplyPlan {
    /// Delay after the probe message's creation, in thousandths of the
    /// probe's timeout (0 to 3 timeouts).
    delay_permille: u64,
    referenced: bool,
    /// A placeholder at once, edited into the answer after the delay.
    placeholder: bool,
}

#[derive(Debug, Clone)]
struct ForeignPlan {
    delay_ms: u64,
    webhook: bool,
    referenced: bool,
}

#[derive(Debug, Clone)]
struct ProbePlan {
    timeout_ms: u64,
    gap_ms: u64,
    http_ms: u64,
    echo_ms: Option<u64>,
    reply: Option<ReplyPlan>,
    foreign: Vec<ForeignPlan>,
}

fn probe_plan() -> impl Strategy<Value = ProbePlan> {
    let reply = (0u64..3000, any::<bool>(), any::<bool>()).prop_map(|(d, r, p)| ReplyPlan {
        delay_permille: d,
        referenced: r,
        placeholder: p,
    });
    let foreign = (0u64..1500, any::<bool>(), any::<bool>()).prop_map(|(d, w, r)| ForeignPlan {
        delay_ms: d,
        webhook: w,
        referenced: r,
    });
    (
        prop::sample::select(vec![300u64, 500, 1000]),
        0u64..300,
        1u64..60,
        prop::option::weighted(0.9, 0u64..100),
        prop::option::weighted(0.8, reply),
        prop::collection::vec(foreign, 0..2),
    )
        .prop_map(
            |(timeout_ms, gap_ms, http_ms, echo_ms, reply, foreign)| ProbePlan {
                timeout_ms,
                gap_ms,
                http_ms,
                echo_ms,
                reply,
                foreign,
            },
        )
}

/// A message in the channel and what it really is.
#[derive(Debug, Clone)]
struct Msg {
    incoming: Incoming,
    edit: bool,
    /// The probe it was meant for (`None`: not the bot's reply).
    meant_for: Option<usize>,
    /// The answer itself (not a placeholder to be edited).
    complete: bool,
}

#[derive(Debug, Clone)]
enum Action {
    Begin(usize),
    Sent(usize),
    Arrive(Msg),
    Deadline(usize),
}

#[derive(Default)]
struct ProbeState {
    token: u64,
    message_id: u64,
    begun_at: u64,
    finished_at: Option<u64>,
    answered: bool,
    ambiguous: bool,
    echoed: bool,
    foreign_seen: usize,
    foreign_expected: usize,
    /// Replies this probe must see (arrived while it was in flight).
    owed: Vec<u64>,
    got: Vec<u64>,
    rx: Option<mpsc::UnboundedReceiver<ProbeEvent>>,
}

struct Channel {
    id: u64,
    plans: Vec<ProbePlan>,
    probes: Vec<ProbeState>,
    current: Option<usize>,
}

struct Sim {
    base: Instant,
    c: Correlator,
    queue: BinaryHeap<Reverse<(u64, u64, usize)>>,
    actions: Vec<(usize, Action)>,
    seq: u64,
    channels: Vec<Channel>,
    late: Vec<(String, u64)>,
}

fn name(ch: usize, k: usize) -> String {
    format!("c{ch}p{k}")
}

impl Sim {
    fn at(&self, t: u64) -> Instant {
        self.base + Duration::from_millis(t)
    }

    fn schedule(&mut self, t: u64, ch: usize, a: Action) {
        self.seq += 1;
        self.actions.push((ch, a));
        self.queue
            .push(Reverse((t, self.seq, self.actions.len() - 1)));
    }

    /// Snowflake-like ids: ordered by creation time.
    fn id(&mut self, t: u64) -> u64 {
        self.seq += 1;
        (t << 20) | self.seq
    }

    fn take_events(&mut self, ch: usize, t: u64) {
        let Some(k) = self.channels[ch].current else {
            return;
        };
        let cid = self.channels[ch].id;
        loop {
            let p = &mut self.channels[ch].probes[k];
            let Some(event) = p.rx.as_mut().and_then(|rx| rx.try_recv().ok()) else {
                return;
            };
            match event {
                ProbeEvent::Typing { .. } => {}
                ProbeEvent::Foreign {
                    author_id,
                    from_webhook,
                } => {
                    assert!(author_id != TARGET || from_webhook);
                    p.foreign_seen += 1;
                }
                ProbeEvent::Ambiguous => p.ambiguous = true,
                ProbeEvent::OwnEcho => p.echoed = true,
                ProbeEvent::Reply { message, edit, .. } => {
                    assert_eq!(message.author_id, TARGET, "only the target replies");
                    assert!(!message.from_webhook, "never a webhook");
                    p.got.push(message.id);
                    p.answered = true;
                    if self.complete(message.id, edit) {
                        let token = self.channels[ch].probes[k].token;
                        let timeout = Duration::from_millis(self.channels[ch].plans[k].timeout_ms);
                        let now = self.at(t);
                        self.c.finish(cid, token, true, timeout, now);
                        self.end_turn(ch, k, t);
                        return;
                    }
                }
            }
        }
    }

    /// Whether the message with this id (as an edit or not) is the answer.
    fn complete(&self, id: u64, edit: bool) -> bool {
        self.actions.iter().any(|(_, a)| match a {
            Action::Arrive(m) => m.incoming.id == id && m.edit == edit && m.complete,
            _ => false,
        })
    }

    fn end_turn(&mut self, ch: usize, k: usize, t: u64) {
        let chan = &mut self.channels[ch];
        chan.probes[k].finished_at = Some(t);
        chan.probes[k].rx = None;
        chan.current = None;
        if k + 1 < chan.plans.len() {
            let gap = chan.plans[k + 1].gap_ms;
            self.schedule(t + gap, ch, Action::Begin(k + 1));
        }
    }

    fn step(&mut self, t: u64, ch: usize, action: Action) {
        let cid = self.channels[ch].id;
        match action {
            Action::Begin(k) => {
                let nonce = format!("n{ch}-{k}");
                let (token, rx) = self.c.begin(cid, &name(ch, k), &nonce);
                // A stale finish of the previous probe never ends this one.
                if k > 0 {
                    let old = self.channels[ch].probes[k - 1].token;
                    self.c
                        .finish(cid, old, false, Duration::from_secs(1), self.at(t));
                }
                let plan = self.channels[ch].plans[k].clone();
                let created = t + plan.http_ms / 2;
                let message_id = self.id(created);
                {
                    let p = &mut self.channels[ch].probes[k];
                    p.token = token;
                    p.message_id = message_id;
                    p.begun_at = t;
                    p.rx = Some(rx);
                }
                self.channels[ch].current = Some(k);
                self.schedule(t + plan.http_ms, ch, Action::Sent(k));
                self.schedule(t + plan.timeout_ms, ch, Action::Deadline(k));
                if let Some(e) = plan.echo_ms {
                    let echo = Msg {
                        incoming: incoming(message_id, PROBER, false, Some(nonce), None),
                        edit: false,
                        meant_for: None,
                        complete: false,
                    };
                    self.schedule(created + e, ch, Action::Arrive(echo));
                }
                if let Some(r) = &plan.reply {
                    let mut delay = plan.timeout_ms * r.delay_permille / 1000;
                    if !r.referenced {
                        // Unreferenced replies are told apart only within one
                        // timeout after their probe ended.
                        delay = delay.min(2 * plan.timeout_ms - plan.http_ms - 1);
                    }
                    let reference = r.referenced.then_some(message_id);
                    if r.placeholder {
                        let pid = self.id(created + 1);
                        let first = Msg {
                            incoming: incoming(pid, TARGET, false, None, reference),
                            edit: false,
                            meant_for: Some(k),
                            complete: false,
                        };
                        let edit = Msg {
                            edit: true,
                            complete: true,
                            ..first.clone()
                        };
                        self.schedule(created + 1, ch, Action::Arrive(first));
                        self.schedule(created + 1 + delay, ch, Action::Arrive(edit));
                    } else {
                        let rid = self.id(created + delay);
                        let reply = Msg {
                            incoming: incoming(rid, TARGET, false, None, reference),
                            edit: false,
                            meant_for: Some(k),
                            complete: true,
                        };
                        self.schedule(created + delay, ch, Action::Arrive(reply));
                    }
                }
                for f in &plan.foreign {
                    let fid = self.id(created + f.delay_ms);
                    let author = if f.webhook { TARGET } else { STRANGER };
                    let m = Msg {
                        incoming: incoming(
                            fid,
                            author,
                            f.webhook,
                            None,
                            f.referenced.then_some(message_id),
                        ),
                        edit: false,
                        meant_for: None,
                        complete: false,
                    };
                    self.schedule(created + f.delay_ms, ch, Action::Arrive(m));
                }
            }
            Action::Sent(k) => {
                let id = self.channels[ch].probes[k].message_id;
                if self.channels[ch].current == Some(k) {
                    for l in self.c.sent(cid, id) {
                        self.late.push((l.probe, t));
                    }
                    self.take_events(ch, t);
                }
            }
            Action::Arrive(m) => {
                let current = self.channels[ch].current;
                if let Some(k) = current {
                    let p = &mut self.channels[ch].probes[k];
                    let is_foreign = m.incoming.author_id != TARGET
                        && m.incoming.author_id != PROBER
                        || m.incoming.from_webhook;
                    if is_foreign {
                        p.foreign_expected += 1;
                    }
                    if m.meant_for == Some(k) {
                        p.owed.push(m.incoming.id);
                    }
                }
                let late = self
                    .c
                    .on_message(cid, m.incoming.clone(), self.at(t), m.edit);
                if let Some(l) = &late {
                    // A referenced reply is only ever late for its own probe.
                    if let (Some(j), Some(_)) = (m.meant_for, m.incoming.reference) {
                        assert_eq!(
                            l.probe,
                            name(ch, j),
                            "a late referenced reply names its probe"
                        );
                    }
                    self.late.push((l.probe.clone(), t));
                }
                self.take_events(ch, t);
            }
            Action::Deadline(k) => {
                if self.channels[ch].current == Some(k) {
                    self.take_events(ch, t);
                }
                if self.channels[ch].current == Some(k) {
                    let p = &self.channels[ch].probes[k];
                    let timeout = Duration::from_millis(self.channels[ch].plans[k].timeout_ms);
                    self.c.finish(cid, p.token, p.answered, timeout, self.at(t));
                    self.end_turn(ch, k, t);
                }
            }
        }
    }
}

fn incoming(
    id: u64,
    author: u64,
    webhook: bool,
    nonce: Option<String>,
    reference: Option<u64>,
) -> Incoming {
    Incoming {
        id,
        author_id: author,
        from_webhook: webhook,
        nonce,
        reference,
        view: ReplyView {
            content: format!("m{id}"),
            embeds: vec![],
        },
        edited_at: None,
    }
}

fn check(plans: Vec<Vec<ProbePlan>>) {
    let mut sim = Sim {
        base: Instant::now(),
        c: Correlator::new(TARGET, PROBER),
        queue: BinaryHeap::new(),
        actions: Vec::new(),
        seq: 0,
        channels: Vec::new(),
        late: Vec::new(),
    };
    for (ch, p) in plans.into_iter().enumerate() {
        let n = p.len();
        sim.channels.push(Channel {
            id: 1000 + ch as u64,
            plans: p,
            probes: (0..n).map(|_| ProbeState::default()).collect(),
            current: None,
        });
        let gap = sim.channels[ch].plans[0].gap_ms;
        sim.schedule(gap, ch, Action::Begin(0));
    }
    while let Some(Reverse((t, _, i))) = sim.queue.pop() {
        let (ch, action) = sim.actions[i].clone();
        sim.step(t, ch, action);
    }

    let meant: HashMap<u64, Option<(usize, usize)>> = sim
        .actions
        .iter()
        .filter_map(|(ch, a)| match a {
            Action::Arrive(m) => Some((m.incoming.id, m.meant_for.map(|k| (*ch, k)))),
            _ => None,
        })
        .collect();
    for (ch, chan) in sim.channels.iter().enumerate() {
        for (k, p) in chan.probes.iter().enumerate() {
            let who = name(ch, k);
            assert!(p.finished_at.is_some(), "{who} ended");
            for id in &p.got {
                let mine = meant[id] == Some((ch, k));
                assert!(
                    mine || p.ambiguous,
                    "{who} was given another probe's reply {id} without being told it is ambiguous"
                );
            }
            for id in &p.owed {
                assert!(
                    p.got.contains(id) || p.ambiguous,
                    "{who} missed its own reply {id} (got {:?})",
                    p.got
                );
            }
            assert_eq!(
                p.foreign_seen, p.foreign_expected,
                "{who}: foreign messages"
            );
            if chan.plans[k].echo_ms.is_some_and(|e| {
                p.begun_at + chan.plans[k].http_ms / 2 + e < p.finished_at.unwrap_or(0)
            }) {
                assert!(p.echoed, "{who} saw its own echo");
            }
        }
    }
}

proptest! {
    #![proptest_config(Config {
        cases: 400,
        rng_seed: RngSeed::Fixed(0x7715_0000_2026),
        failure_persistence: None,
        ..Config::default()
    })]

    #[test]
    fn every_probe_gets_its_own_replies_and_never_anothers(
        plans in prop::collection::vec(prop::collection::vec(probe_plan(), 1..6), 1..4)
    ) {
        check(plans);
    }
}
