//! The `presence` probe: the target bot's presence in one guild, as Discord
//! reports it to the prober (kept current by gateway events).

use std::sync::Arc;

use super::{Check, Outcome};
use crate::config::PresenceSpec;
use crate::discord::DiscordSession;

#[derive(Debug)]
pub struct PresenceProbe {
    spec: PresenceSpec,
    session: Arc<DiscordSession>,
}

impl PresenceProbe {
    pub fn new(spec: PresenceSpec, session: Arc<DiscordSession>) -> Self {
        PresenceProbe { spec, session }
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
        let mut check = match self.session.target_online(guild_id) {
            Some(true) => Check::new(Outcome::Success, format!("the bot is online in {place}")),
            Some(false) => Check::new(Outcome::Failure, format!("the bot is offline in {place}")),
            None => {
                return Check::new(
                    Outcome::Inconclusive,
                    format!(
                        "the prober has not seen {place}: is the prober a member of that guild?"
                    ),
                );
            }
        };
        check.observations.target_online = Some(check.outcome == Outcome::Success);
        check
    }
}
