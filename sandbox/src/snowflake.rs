//! Discord snowflakes: `(ms since 2015-01-01) << 22 | worker << 17 | process << 12 | increment`.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Discord's epoch, the first second of 2015, in unix milliseconds.
pub const DISCORD_EPOCH_MS: u64 = 1_420_070_400_000;

/// The creation time encoded in a snowflake.
pub fn timestamp(id: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_millis((id >> 22) + DISCORD_EPOCH_MS)
}

/// Makes unique, increasing snowflakes whose time part is the moment of creation.
#[derive(Debug, Default)]
pub struct Snowflakes {
    /// (last millisecond used, increment within it)
    last: Mutex<(u64, u64)>,
}

impl Snowflakes {
    /// A new id for something created at `at`.
    pub fn next_at(&self, at: SystemTime) -> u64 {
        let ms = at
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        let ms = ms.saturating_sub(DISCORD_EPOCH_MS);
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let (ms, increment) = if ms > last.0 {
            (ms, 0)
        } else if last.1 < 0xfff {
            (last.0, last.1 + 1)
        } else {
            // 4096 ids in one millisecond: borrow the next millisecond.
            (last.0 + 1, 0)
        };
        *last = (ms, increment);
        // worker 1, process 0: any fixed values do.
        (ms << 22) | (1 << 17) | increment
    }

    pub fn next(&self) -> u64 {
        self.next_at(SystemTime::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_increase_and_carry_their_time() {
        let ids = Snowflakes::default();
        let now = SystemTime::now();
        let a = ids.next_at(now);
        let b = ids.next_at(now);
        assert!(b > a);
        let t = timestamp(a).duration_since(UNIX_EPOCH).unwrap().as_millis();
        let n = now.duration_since(UNIX_EPOCH).unwrap().as_millis();
        assert_eq!(t, n);
    }

    #[test]
    fn a_known_discord_id_decodes() {
        // Discord's documentation example: 175928847299117063 → 2016-04-30 11:18:25.796 UTC.
        let t = timestamp(175_928_847_299_117_063)
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis();
        assert_eq!(t, 1_462_015_105_796);
    }
}
