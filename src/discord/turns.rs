//! Turns in a channel: probes that share a channel send one at a time, and
//! a turn lasts until the probe holding it has decided its result. So a
//! reply in the channel can only be for the probe holding the turn (or a
//! late reply to an earlier one), never for a probe that sent after it.
//!
//! Turns are handed out first come, first served (tokio's mutex is fair),
//! and each turn also keeps the send budget: the time of the channel's last
//! probe message, so the next one waits `send_interval` after it. Waiting
//! for a turn and for the budget happens before a probe's clock starts.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::OwnedMutexGuard;

/// All channels' turns of one prober session.
#[derive(Debug, Default)]
pub struct ChannelTurns {
    /// channel → the time of its last probe message, behind the turn lock.
    channels: Mutex<HashMap<u64, Arc<tokio::sync::Mutex<Option<Instant>>>>>,
}

/// A turn in one channel; dropping it ends the turn.
#[derive(Debug)]
pub struct Turn {
    last_send: OwnedMutexGuard<Option<Instant>>,
}

impl ChannelTurns {
    /// Waits up to `wait` for a turn in `channel`; `None` if it did not come.
    pub async fn take(&self, channel: u64, wait: Duration) -> Option<Turn> {
        let lock = self
            .channels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(channel)
            .or_default()
            .clone();
        let last_send = tokio::time::timeout(wait, lock.lock_owned()).await.ok()?;
        Some(Turn { last_send })
    }
}

impl Turn {
    /// Waits until `send_interval` has passed since the channel's last
    /// probe message (Discord's per-channel rate limit, kept far below).
    pub async fn send_budget(&self, send_interval: Duration) {
        if let Some(last) = *self.last_send {
            tokio::time::sleep_until((last + send_interval).into()).await;
        }
    }

    /// Records a probe message sent at `at`.
    pub fn sent(&mut self, at: Instant) {
        *self.last_send = Some(at);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_turn_lasts_until_it_is_dropped_and_turns_are_first_come_first_served() {
        let turns = Arc::new(ChannelTurns::default());
        let first = turns.take(1, Duration::ZERO).await.expect("free channel");
        // Another channel is independent.
        assert!(turns.take(2, Duration::ZERO).await.is_some());
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut waiters = tokio::task::JoinSet::new();
        for i in 0..3 {
            let (turns, order) = (turns.clone(), order.clone());
            waiters.spawn(async move {
                let _turn = turns.take(1, Duration::from_secs(60)).await.expect("turn");
                order.lock().unwrap().push(i);
                tokio::time::sleep(Duration::from_secs(1)).await;
            });
            // Queue them in a known order.
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(
            order.lock().unwrap().is_empty(),
            "nobody gets the turn while it is held"
        );
        drop(first);
        while waiters.join_next().await.is_some() {}
        assert_eq!(*order.lock().unwrap(), vec![0, 1, 2]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_turn_that_does_not_come_in_time_is_none() {
        let turns = ChannelTurns::default();
        let _held = turns.take(1, Duration::ZERO).await.expect("free channel");
        let start = tokio::time::Instant::now();
        assert!(turns.take(1, Duration::from_secs(3)).await.is_none());
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }

    #[tokio::test(start_paused = true)]
    async fn the_send_budget_spaces_messages_in_a_channel() {
        let turns = ChannelTurns::default();
        let mut turn = turns.take(1, Duration::ZERO).await.expect("turn");
        let start = tokio::time::Instant::now();
        turn.send_budget(Duration::from_secs(2)).await;
        assert_eq!(start.elapsed(), Duration::ZERO, "no earlier message");
        turn.sent(start.into_std());
        drop(turn);
        let turn = turns.take(1, Duration::ZERO).await.expect("turn");
        turn.send_budget(Duration::from_secs(2)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(2));
    }

    /// One probe of the model: when it asks for a turn, in which channel,
    /// how long it holds the turn, and the longest it could hold one.
    #[derive(Debug, Clone)]
    struct Asker {
        channel: u64,
        arrives_ms: u64,
        holds_ms: u64,
        longest_ms: u64,
    }

    fn asker() -> impl proptest::strategy::Strategy<Value = Asker> {
        use proptest::prelude::*;
        (0u64..2, 0u64..3000, 0u64..2000, 0u64..500).prop_map(
            |(channel, arrives_ms, holds_ms, extra)| Asker {
                channel,
                arrives_ms,
                holds_ms,
                longest_ms: holds_ms + extra,
            },
        )
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config {
            cases: 200,
            rng_seed: proptest::test_runner::RngSeed::Fixed(0x7715_0001),
            failure_persistence: None,
            ..proptest::test_runner::Config::default()
        })]

        /// Against the reference model (one turn per channel at a time, in
        /// order of asking): with each probe waiting at most the longest
        /// turns of the others in its channel, every probe gets its turn,
        /// turns never overlap, and they come first come, first served.
        #[test]
        fn turns_never_overlap_come_in_order_and_within_the_bound(
            askers in proptest::collection::vec(asker(), 1..7)
        ) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap();
            rt.block_on(async {
                let turns = Arc::new(ChannelTurns::default());
                let log = Arc::new(Mutex::new(Vec::new()));
                let t0 = tokio::time::Instant::now();
                let mut tasks = tokio::task::JoinSet::new();
                for (i, a) in askers.iter().enumerate() {
                    // Ties in arrival are ordered by index.
                    let bound: u64 = askers
                        .iter()
                        .enumerate()
                        .filter(|(j, b)| *j != i && b.channel == a.channel)
                        .map(|(_, b)| b.longest_ms)
                        .sum();
                    let (turns, log, a) = (turns.clone(), log.clone(), a.clone());
                    tasks.spawn(async move {
                        tokio::time::sleep_until(t0 + Duration::from_millis(a.arrives_ms)).await;
                        let asked = t0.elapsed();
                        let turn = turns.take(a.channel, Duration::from_millis(bound)).await;
                        let Some(_turn) = turn else {
                            return Err(format!("probe {i} got no turn within {bound} ms"));
                        };
                        let start = t0.elapsed();
                        tokio::time::sleep(Duration::from_millis(a.holds_ms)).await;
                        log.lock().unwrap().push((a.channel, i, asked, start, t0.elapsed()));
                        Ok(())
                    });
                    tokio::task::yield_now().await;
                }
                while let Some(r) = tasks.join_next().await {
                    r.unwrap().map_err(proptest::test_runner::TestCaseError::fail)?;
                }
                let log = log.lock().unwrap();
                for ch in 0..2 {
                    let mut held: Vec<_> = log.iter().filter(|e| e.0 == ch).collect();
                    held.sort_by_key(|e| e.3);
                    for w in held.windows(2) {
                        proptest::prop_assert!(w[0].4 <= w[1].3, "turns overlap: {w:?}");
                        proptest::prop_assert!(
                            (w[0].2, w[0].1) <= (w[1].2, w[1].1),
                            "not first come, first served: {w:?}"
                        );
                    }
                }
                Ok(())
            })?;
        }
    }
}
