//! The `presence` probe: the target bot's presence in one guild, as Discord
//! reports it to the prober (kept current by gateway events).

use std::sync::Arc;
use std::time::Duration;

use super::{Check, Outcome};
use crate::config::PresenceSpec;
use crate::discord::{DiscordSession, PingError};

#[derive(Debug)]
pub struct PresenceProbe {
    spec: PresenceSpec,
    /// How long the gateway round trip may take: the probe's timeout.
    wait: Duration,
    session: Arc<DiscordSession>,
}

impl PresenceProbe {
    pub fn new(spec: PresenceSpec, wait: Duration, session: Arc<DiscordSession>) -> Self {
        PresenceProbe {
            spec,
            wait,
            session,
        }
    }

    /// The runner's limit: the wait plus a margin; a prober-side overrun.
    pub fn max_duration(&self) -> Duration {
        self.wait + Duration::from_secs(2)
    }

    pub async fn check(&self) -> Check {
        let PresenceSpec {
            guild_id,
            shard,
            shard_count,
        } = self.spec;
        let place = if shard_count > 1 {
            format!("guild {guild_id} (shard {shard} of {shard_count})")
        } else {
            format!("guild {guild_id}")
        };
        if !self.session.is_connected() {
            return Check::new(
                Outcome::Inconclusive,
                "the prober's own gateway connection to Discord is down; presence unknown",
            );
        }
        // Ask Discord now rather than trust the last event: the answer also
        // proves the prober's gateway is delivering.
        let online = match self.session.gateway_ping(guild_id, self.wait).await {
            Ok(Some(online)) => online,
            Ok(None) => {
                return Check::new(
                    Outcome::Inconclusive,
                    format!(
                        "Discord sent no presence data for {place}: the prober needs the Presence intent and membership there"
                    ),
                );
            }
            Err(PingError::RateLimited) => {
                return Check::new(
                    Outcome::Inconclusive,
                    "Discord rate-limited the prober's presence request; presence unknown",
                );
            }
            Err(PingError::NoAnswer) => {
                return Check::new(
                    Outcome::Inconclusive,
                    format!(
                        "the prober's own gateway did not answer within {}; presence unknown",
                        humantime::format_duration(self.wait)
                    ),
                );
            }
        };
        let mut check = if online {
            Check::new(Outcome::Success, format!("the bot is online in {place}"))
        } else {
            Check::new(Outcome::Failure, format!("the bot is offline in {place}"))
        };
        check.observations.target_online = Some(check.outcome == Outcome::Success);
        check
    }
}
