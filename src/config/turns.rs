//! Probes that share a channel take turns: one probe message at a time, and
//! a turn lasts until that probe's result is decided. These functions say
//! how long a turn can last, how long a probe may wait for one, and which
//! channels hold more probes than their schedules leave time for.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{Config, Module, ModuleTargets, ProbeKind, ProbeSpec};

/// How long a command probe waits for a gateway round trip that proves its
/// own gateway was delivering before it reports a timeout (at most its own
/// timeout).
pub const GATEWAY_PROOF_WAIT: Duration = Duration::from_secs(5);

/// How long Discord may take to accept a probe message before the run is
/// `inconclusive` (the prober could not send; the bot was not probed).
pub const SEND_WAIT: Duration = Duration::from_secs(10);

/// The longest one turn of a command probe can last: the send budget's wait,
/// the send, the wait for the reply and the gateway proof.
pub fn longest_turn(timeout: Duration, send_interval: Duration) -> Duration {
    send_interval + SEND_WAIT + timeout + GATEWAY_PROOF_WAIT.min(timeout)
}

/// Fills in each command probe's `turn_wait`: the longest turns of the other
/// probes in its channel, one each. Turns are handed out first come, first
/// served, and a probe never overlaps itself, so a probe waiting longer than
/// that is held up by something other than its neighbours' turns.
///
/// A command module's scrapes (`GET /probe`) take turns in its channels
/// too, one at a time per channel: each listed channel counts one turn of
/// the module.
pub(super) fn assign_turn_waits(
    probes: &mut [ProbeSpec],
    modules: &BTreeMap<String, Module>,
    send_interval: Duration,
) {
    let mut per_channel: BTreeMap<u64, Duration> = BTreeMap::new();
    for p in probes.iter() {
        if let ProbeKind::Command(c) = &p.kind {
            *per_channel.entry(c.channel_id).or_default() += longest_turn(p.timeout, send_interval);
        }
    }
    for m in modules.values() {
        if let ModuleTargets::Channels(channels) = &m.targets {
            for (channel, _) in channels {
                *per_channel.entry(*channel).or_default() +=
                    longest_turn(m.template.timeout, send_interval);
            }
        }
    }
    for p in probes.iter_mut() {
        let own = longest_turn(p.timeout, send_interval);
        if let ProbeKind::Command(c) = &mut p.kind {
            c.turn_wait = per_channel[&c.channel_id].saturating_sub(own);
        }
    }
}

/// Channels whose probes cannot all take a turn within the shortest of their
/// schedules (their timeouts plus `send_interval` each exceed it): their runs
/// will wait for their turn and may skip slots. One warning per channel,
/// naming it and its probes.
pub fn crowded_channels(config: &Config) -> Vec<String> {
    let Some(discord) = &config.discord else {
        return vec![];
    };
    let mut per_channel: BTreeMap<u64, Vec<&ProbeSpec>> = BTreeMap::new();
    for p in &config.probes {
        if let ProbeKind::Command(c) = &p.kind {
            per_channel.entry(c.channel_id).or_default().push(p);
        }
    }
    let mut warnings = Vec::new();
    for (channel, probes) in per_channel {
        if probes.len() < 2 {
            continue;
        }
        let round: Duration = probes
            .iter()
            .map(|p| p.timeout + discord.send_interval)
            .sum();
        // Probes that run only when scraped have no schedule to miss.
        let Some((shortest, interval)) = probes
            .iter()
            .filter_map(|p| Some((p, p.schedule.min_interval()?)))
            .min_by_key(|(_, interval)| *interval)
        else {
            continue;
        };
        if round > interval {
            let names: Vec<&str> = probes.iter().map(|p| p.name.as_str()).collect();
            warnings.push(format!(
                "channel {channel}: probes {} take turns there and need up to {} per round \
                 (their timeouts plus send_interval {} each), more than the shortest schedule there \
                 ({:?}, {}): \
                 runs will wait for their turn, and a run that cannot get it in time is inconclusive",
                names.join(", "),
                humantime::format_duration(round),
                humantime::format_duration(discord.send_interval),
                shortest.name,
                shortest.schedule,
            ));
        }
    }
    warnings
}
