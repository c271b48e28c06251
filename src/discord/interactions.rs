//! Interaction responses the prober's gateway saw: messages from the target
//! carrying `interaction_metadata` (slash commands real users ran). Kept in
//! a bounded log with a sequence number, so each `interactions` probe reads
//! what arrived since its last run without holding a subscription. The log
//! knows its readers (one per `interactions` probe) and keeps an entry only
//! until every reader has read it: with no reader it keeps nothing, so a
//! prober without `interactions` probes does not fill it for nothing.

use std::collections::{BTreeMap, VecDeque};
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
    /// Each reader's cursor: what it has read up to.
    readers: BTreeMap<u64, u64>,
    next_reader: u64,
}

impl InteractionLog {
    pub fn push(&mut self, r: SeenResponse) {
        self.next += 1;
        if self.readers.is_empty() {
            return;
        }
        self.entries.push_back((self.next, r));
        while self.entries.len() > LOG_CAPACITY {
            self.entries.pop_front();
        }
    }

    /// A new reader, and its cursor: it reads what arrives from now on.
    pub fn add_reader(&mut self) -> (u64, u64) {
        self.next_reader += 1;
        self.readers.insert(self.next_reader, self.next);
        (self.next_reader, self.next)
    }

    pub fn remove_reader(&mut self, reader: u64) {
        self.readers.remove(&reader);
        self.trim();
    }

    /// Entries after `cursor` for `reader`, the new cursor, and how many were
    /// lost because the reader fell more than [`LOG_CAPACITY`] behind.
    pub fn since(&mut self, reader: u64, cursor: u64) -> (Vec<SeenResponse>, u64, u64) {
        let first = self.entries.front().map(|e| e.0).unwrap_or(self.next + 1);
        let lost = first.saturating_sub(cursor + 1);
        let out = self
            .entries
            .iter()
            .filter(|(seq, _)| *seq > cursor)
            .map(|(_, r)| r.clone())
            .collect();
        self.readers.insert(reader, self.next);
        self.trim();
        (out, self.next, lost)
    }

    /// Drops what every reader has read (everything, with no reader).
    fn trim(&mut self) {
        let read = self.readers.values().min().copied().unwrap_or(self.next);
        while self.entries.front().is_some_and(|(seq, _)| *seq <= read) {
            self.entries.pop_front();
        }
    }

    /// Entries kept (for tests of the bound).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn response(id: u64) -> SeenResponse {
        SeenResponse {
            interaction_id: id,
            message_id: id,
            channel_id: 1,
            guild_id: None,
            command: "ping".into(),
            loading: false,
            followup: false,
            edited_at: None,
            update: false,
            view: ReplyView::default(),
        }
    }

    fn ids(seen: &[SeenResponse]) -> Vec<u64> {
        seen.iter().map(|r| r.interaction_id).collect()
    }

    #[test]
    fn without_a_reader_nothing_is_kept() {
        let mut log = InteractionLog::default();
        for i in 0..100 {
            log.push(response(i));
        }
        assert!(log.is_empty());
        // A reader made now starts at the end: it missed nothing it could see.
        let (reader, start) = log.add_reader();
        assert_eq!(log.since(reader, start), (vec![], 100, 0));
    }

    #[test]
    fn an_entry_goes_once_every_reader_has_read_it() {
        let mut log = InteractionLog::default();
        let (fast, mut fast_at) = log.add_reader();
        let (slow, slow_at) = log.add_reader();
        log.push(response(1));
        log.push(response(2));
        let (seen, at, _) = log.since(fast, fast_at);
        fast_at = at;
        assert_eq!(ids(&seen), [1, 2]);
        assert_eq!(log.len(), 2, "the slow reader has not read them yet");
        log.push(response(3));
        let (seen, _, lost) = log.since(slow, slow_at);
        assert_eq!((ids(&seen), lost), (vec![1, 2, 3], 0));
        assert_eq!(log.len(), 1, "3 is still unread by the fast reader");
        let (seen, _, _) = log.since(fast, fast_at);
        assert_eq!(ids(&seen), [3]);
        assert!(log.is_empty());
    }

    #[test]
    fn a_removed_reader_holds_nothing_back() {
        let mut log = InteractionLog::default();
        let (gone, _) = log.add_reader();
        let (stays, at) = log.add_reader();
        log.push(response(1));
        log.since(stays, at);
        assert_eq!(log.len(), 1);
        log.remove_reader(gone);
        assert!(log.is_empty());
    }

    #[test]
    fn a_reader_that_falls_behind_the_bound_is_told_how_many_it_lost() {
        let mut log = InteractionLog::default();
        let (reader, at) = log.add_reader();
        let n = LOG_CAPACITY as u64 + 5;
        for i in 1..=n {
            log.push(response(i));
        }
        assert_eq!(log.len(), LOG_CAPACITY);
        let (seen, end, lost) = log.since(reader, at);
        assert_eq!((seen.len(), end, lost), (LOG_CAPACITY, n, 5));
        assert!(log.is_empty());
    }
}
