//! Interaction responses the prober's gateway saw: messages from the target
//! carrying `interaction_metadata` (slash commands real users ran). Kept in
//! a bounded log with a sequence number, so each `interactions` probe reads
//! what arrived since its last run without holding a subscription.

use std::collections::VecDeque;
use std::time::SystemTime;

use serenity::all::{Message, MessageFlags, MessageInteractionMetadata, MessageUpdateEvent};

use crate::probe::reply::ReplyView;

/// Responses kept for the probes to read (the oldest go first).
pub const LOG_CAPACITY: usize = 10_000;

/// One response message as it was created or edited.
#[derive(Debug, Clone, PartialEq)]
pub struct SeenResponse {
    pub interaction_id: u64,
    pub message_id: u64,
    pub channel_id: u64,
    pub guild_id: Option<u64>,
    /// The command's name as Discord reports it (never a label as is).
    pub command: String,
    /// A deferred response still "thinking" (flag LOADING).
    pub loading: bool,
    /// A follow-up rather than the original response.
    pub followup: bool,
    pub edited_at: Option<SystemTime>,
    /// Whether this is an edit (MESSAGE_UPDATE) rather than the creation.
    pub update: bool,
    pub view: ReplyView,
}

#[derive(Debug, Default)]
pub struct InteractionLog {
    next: u64,
    entries: VecDeque<(u64, SeenResponse)>,
}

impl InteractionLog {
    pub fn push(&mut self, r: SeenResponse) {
        self.next += 1;
        self.entries.push_back((self.next, r));
        while self.entries.len() > LOG_CAPACITY {
            self.entries.pop_front();
        }
    }

    /// Entries after `cursor`, the new cursor, and how many were lost
    /// because the reader fell more than [`LOG_CAPACITY`] behind.
    pub fn since(&self, cursor: u64) -> (Vec<SeenResponse>, u64, u64) {
        let first = self.entries.front().map(|e| e.0).unwrap_or(self.next + 1);
        let lost = first.saturating_sub(cursor + 1);
        let out = self
            .entries
            .iter()
            .filter(|(seq, _)| *seq > cursor)
            .map(|(_, r)| r.clone())
            .collect();
        (out, self.next, lost)
    }

    pub fn cursor(&self) -> u64 {
        self.next
    }
}

/// The interaction id and whether the message is a follow-up, for slash
/// command responses.
fn command_metadata(m: Option<&MessageInteractionMetadata>) -> Option<(u64, bool)> {
    match m? {
        MessageInteractionMetadata::Command(c) => {
            Some((c.id.get(), c.original_response_message_id.is_some()))
        }
        _ => None,
    }
}

/// A response from MESSAGE_CREATE; ephemeral ones never reach the prober.
#[allow(deprecated)] // `interaction.name`: `interaction_metadata` has no name in serenity 0.12
pub fn from_message(m: &Message, view: ReplyView) -> Option<SeenResponse> {
    let (interaction_id, followup) = command_metadata(m.interaction_metadata.as_deref())?;
    let flags = m.flags.unwrap_or_default();
    Some(SeenResponse {
        interaction_id,
        message_id: m.id.get(),
        channel_id: m.channel_id.get(),
        guild_id: m.guild_id.map(|g| g.get()),
        command: m
            .interaction
            .as_ref()
            .map(|i| i.name.clone())
            .unwrap_or_default(),
        loading: flags.contains(MessageFlags::LOADING),
        followup,
        edited_at: m.edited_timestamp.map(|t| SystemTime::from(*t)),
        update: false,
        view,
    })
}

/// A response from MESSAGE_UPDATE (which carries the whole message on v10).
#[allow(deprecated)]
pub fn from_update(u: &MessageUpdateEvent, view: ReplyView) -> Option<SeenResponse> {
    let meta = u.interaction_metadata.clone().flatten();
    let (interaction_id, followup) = command_metadata(meta.as_deref())?;
    let flags = u.flags.flatten().unwrap_or_default();
    Some(SeenResponse {
        interaction_id,
        message_id: u.id.get(),
        channel_id: u.channel_id.get(),
        guild_id: u.guild_id.map(|g| g.get()),
        command: u
            .interaction
            .clone()
            .flatten()
            .map(|i| i.name.clone())
            .unwrap_or_default(),
        loading: flags.contains(MessageFlags::LOADING),
        followup,
        edited_at: u.edited_timestamp.map(|t| SystemTime::from(*t)),
        update: true,
        view,
    })
}
