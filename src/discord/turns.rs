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
}
