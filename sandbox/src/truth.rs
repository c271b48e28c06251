//! Ground truth: when each message's request arrived, when it was created,
//! and when each gateway dispatch of it was written to each connection.
//! Benchmarks compare what the prober measured with these.
//!
//! Kept for the most recent `retention.truth_records` messages only, oldest
//! dropped first, so a sandbox that runs for weeks keeps bounded memory.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// Dispatches recorded per message: one per session that received it is a
/// handful; a message edited over and over stops being recorded here.
pub const MAX_DISPATCHES: usize = 64;

#[derive(Debug, Clone)]
pub struct MessageTruth {
    pub message_id: u64,
    pub channel_id: u64,
    pub author_id: u64,
    /// When the REST request that created it reached the sandbox.
    pub request_arrived: Instant,
    /// When the message was created (its snowflake carries the same moment in ms).
    pub created: Instant,
    pub dispatches: Vec<DispatchTruth>,
}

#[derive(Debug, Clone)]
pub struct DispatchTruth {
    pub event: &'static str,
    pub account_id: u64,
    pub connection_id: u64,
    /// When the write that carried the frame began: it cannot have reached
    /// the socket earlier. With `written`, a bracket around the moment the
    /// reader could first read it (a busy machine can hold the writer
    /// between its write and the clock read of `written` for tens of ms).
    pub write_started: Instant,
    /// When that write (and its flush) had returned: the frame was in the
    /// socket by then.
    pub written: Instant,
}

/// The same records with unix-epoch microseconds, for the control API.
#[derive(Debug, Clone, Serialize)]
pub struct MessageTruthJson {
    pub message_id: String,
    pub channel_id: String,
    pub author_id: String,
    pub request_arrived_us: u64,
    pub created_us: u64,
    pub dispatches: Vec<DispatchTruthJson>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DispatchTruthJson {
    pub event: &'static str,
    pub account_id: String,
    pub connection_id: u64,
    pub write_started_us: u64,
    pub written_us: u64,
}

pub struct Truth {
    /// One moment on both clocks, to turn `Instant`s into unix time.
    base: (Instant, SystemTime),
    records: Mutex<Records>,
    /// How many messages' records are kept.
    window: usize,
}

/// The records by message id, and their ids oldest first.
type Records = (HashMap<u64, MessageTruth>, VecDeque<u64>);

impl Truth {
    /// Keeps the records of the last `window` messages.
    pub fn new(window: usize) -> Self {
        Truth {
            base: (Instant::now(), SystemTime::now()),
            records: Mutex::new(Default::default()),
            window,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Records> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn message_created(
        &self,
        message_id: u64,
        channel_id: u64,
        author_id: u64,
        request_arrived: Instant,
        created: Instant,
    ) {
        let mut guard = self.lock();
        let (map, order) = &mut *guard;
        map.insert(
            message_id,
            MessageTruth {
                message_id,
                channel_id,
                author_id,
                request_arrived,
                created,
                dispatches: Vec::new(),
            },
        );
        order.push_back(message_id);
        while order.len() > self.window {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
    }

    pub fn dispatch_written(
        &self,
        message_id: u64,
        event: &'static str,
        account_id: u64,
        connection_id: u64,
        write_started: Instant,
        written: Instant,
    ) {
        if let Some(r) = self.lock().0.get_mut(&message_id)
            && r.dispatches.len() < MAX_DISPATCHES
        {
            r.dispatches.push(DispatchTruth {
                event,
                account_id,
                connection_id,
                write_started,
                written,
            });
        }
    }

    pub fn message(&self, message_id: u64) -> Option<MessageTruth> {
        self.lock().0.get(&message_id).cloned()
    }

    /// Records of a channel (all channels when `None`), oldest first.
    pub fn messages(&self, channel_id: Option<u64>) -> Vec<MessageTruth> {
        let guard = self.lock();
        guard
            .1
            .iter()
            .filter_map(|id| guard.0.get(id))
            .filter(|r| channel_id.is_none_or(|c| r.channel_id == c))
            .cloned()
            .collect()
    }

    pub fn unix_us(&self, at: Instant) -> u64 {
        let t = if at >= self.base.0 {
            self.base.1 + (at - self.base.0)
        } else {
            self.base.1 - (self.base.0 - at)
        };
        t.duration_since(UNIX_EPOCH).unwrap_or_default().as_micros() as u64
    }

    pub fn to_json(&self, r: &MessageTruth) -> MessageTruthJson {
        MessageTruthJson {
            message_id: r.message_id.to_string(),
            channel_id: r.channel_id.to_string(),
            author_id: r.author_id.to_string(),
            request_arrived_us: self.unix_us(r.request_arrived),
            created_us: self.unix_us(r.created),
            dispatches: r
                .dispatches
                .iter()
                .map(|d| DispatchTruthJson {
                    event: d.event,
                    account_id: d.account_id.to_string(),
                    connection_id: d.connection_id,
                    write_started_us: self.unix_us(d.write_started),
                    written_us: self.unix_us(d.written),
                })
                .collect(),
        }
    }
}

impl Default for Truth {
    fn default() -> Self {
        Self::new(crate::config::RetentionConfig::default().truth_records)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_window_of_messages_dropping_the_oldest_first() {
        let truth = Truth::new(3);
        let now = Instant::now();
        for id in 1..=5 {
            truth.message_created(id, 10 + id % 2, 7, now, now);
            truth.dispatch_written(id, "MESSAGE_CREATE", 7, 1, now, now);
        }
        let kept: Vec<u64> = truth.messages(None).iter().map(|r| r.message_id).collect();
        assert_eq!(kept, [3, 4, 5]);
        assert!(truth.message(2).is_none());
        assert_eq!(truth.message(5).unwrap().dispatches.len(), 1);
        let guard = truth.lock();
        assert_eq!((guard.0.len(), guard.1.len()), (3, 3));
    }

    #[test]
    fn dispatches_per_message_are_capped() {
        let truth = Truth::new(1);
        let now = Instant::now();
        truth.message_created(1, 10, 7, now, now);
        for conn in 0..(MAX_DISPATCHES as u64 + 10) {
            truth.dispatch_written(1, "MESSAGE_UPDATE", 7, conn, now, now);
        }
        truth.dispatch_written(99, "MESSAGE_CREATE", 7, 1, now, now);
        assert_eq!(truth.message(1).unwrap().dispatches.len(), MAX_DISPATCHES);
        assert!(truth.message(99).is_none());
    }
}
