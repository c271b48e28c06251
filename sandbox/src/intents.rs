//! Gateway intents: the bits the sandbox filters dispatches by.

pub const GUILDS: u64 = 1 << 0;
pub const GUILD_MEMBERS: u64 = 1 << 1;
pub const GUILD_PRESENCES: u64 = 1 << 8;
pub const GUILD_MESSAGES: u64 = 1 << 9;
pub const GUILD_MESSAGE_REACTIONS: u64 = 1 << 10;
pub const GUILD_MESSAGE_TYPING: u64 = 1 << 11;
pub const MESSAGE_CONTENT: u64 = 1 << 15;

/// Intents that need approval in the developer portal.
pub const PRIVILEGED: u64 = GUILD_MEMBERS | GUILD_PRESENCES | MESSAGE_CONTENT;

/// Every bit Discord defines (0–25, less the retired ones); others are rejected with 4013.
pub const ALL_KNOWN: u64 = (1 << 26) - 1;

pub fn privileged_bit(name: &str) -> Option<u64> {
    match name {
        "GUILD_MEMBERS" => Some(GUILD_MEMBERS),
        "GUILD_PRESENCES" => Some(GUILD_PRESENCES),
        "MESSAGE_CONTENT" => Some(MESSAGE_CONTENT),
        _ => None,
    }
}

/// Names of the privileged bits in `bits`, for messages.
pub fn privileged_names(bits: u64) -> Vec<&'static str> {
    [
        (GUILD_MEMBERS, "GUILD_MEMBERS"),
        (GUILD_PRESENCES, "GUILD_PRESENCES"),
        (MESSAGE_CONTENT, "MESSAGE_CONTENT"),
    ]
    .into_iter()
    .filter(|(b, _)| bits & b != 0)
    .map(|(_, n)| n)
    .collect()
}
