//! Spacing between the prober's probe messages, across all channels.
//!
//! When several probes send at the same instant, the bot's replies tend to
//! come back together, and the prober handles them one after another: the
//! time spent on one reply would count in the next one's latency (measured
//! on a 2-core machine: 20 sends at once, p50 +1.5 ms, p99 +3.7 ms over the
//! sandbox's ground truth; 5 ms apart, +0.16 / +0.7 ms). So sends take turns
//! at least [`SEND_SPACING`] apart. The wait happens before a probe's clock
//! starts, like the per-channel send budget, and is never timed.

use std::time::Duration;

use tokio::sync::Mutex;
// tokio's clock, so that tests can pause it.
use tokio::time::Instant;

/// The least time between two probe messages of this process. 200 sends/s
/// at most, still far above what the per-channel budgets allow.
pub const SEND_SPACING: Duration = Duration::from_millis(5);

/// Hands out send turns, first come first served (tokio's mutex is fair).
#[derive(Debug, Default)]
pub struct SendGate {
    last: Mutex<Option<Instant>>,
}

impl SendGate {
    /// Waits until [`SEND_SPACING`] has passed since the previous turn and
    /// returns when this one began.
    pub async fn turn(&self) -> Instant {
        let mut last = self.last.lock().await;
        if let Some(previous) = *last {
            tokio::time::sleep_until(previous + SEND_SPACING).await;
        }
        let now = Instant::now();
        *last = Some(now);
        now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // On a paused clock: the spacing is exact, and nothing real is waited.
    #[tokio::test(start_paused = true)]
    async fn simultaneous_turns_are_spaced() {
        let gate = std::sync::Arc::new(SendGate::default());
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..5 {
            let gate = gate.clone();
            tasks.spawn(async move { gate.turn().await });
        }
        let mut turns = tasks.join_all().await;
        turns.sort();
        let offsets: Vec<Duration> = turns.iter().map(|t| *t - start).collect();
        let want: Vec<Duration> = (0..5).map(|i| SEND_SPACING * i).collect();
        assert_eq!(
            offsets, want,
            "one turn every SEND_SPACING, the first at once"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_turn_after_a_pause_does_not_wait() {
        let gate = SendGate::default();
        gate.turn().await;
        // The pause is the scenario (the clock jumps: nothing real waits).
        tokio::time::sleep(SEND_SPACING * 2).await;
        let asked = Instant::now();
        let got = gate.turn().await;
        assert_eq!(got, asked, "waited {:?}", got - asked);
    }

    #[tokio::test(start_paused = true)]
    async fn a_turn_soon_after_another_waits_for_the_rest_of_the_spacing() {
        let gate = SendGate::default();
        let first = gate.turn().await;
        tokio::time::sleep(Duration::from_millis(2)).await;
        let got = gate.turn().await;
        assert_eq!(got - first, SEND_SPACING);
    }
}
