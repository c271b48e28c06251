//! Rate limits as Discord applies them: per route bucket and account, plus a
//! global per-account limit; fixed windows, with Discord's headers.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The `X-RateLimit-*` values of one answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Headers {
    pub limit: u32,
    pub remaining: u32,
    /// Unix time in seconds when the bucket resets.
    pub reset: f64,
    /// Seconds until it resets.
    pub reset_after: f64,
    pub bucket: String,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Allowed(Headers),
    Limited {
        headers: Headers,
        retry_after: f64,
        global: bool,
    },
}

#[derive(Debug)]
struct Window {
    remaining: u32,
    reset_at: Instant,
}

/// How often windows that have reset are forgotten.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

#[derive(Debug, Default)]
pub struct RateLimiter {
    windows: Mutex<Windows>,
}

/// The windows by (key, account), and when to next forget those that have
/// reset. A reset window is the same as none: the next request starts a new
/// one, as on Discord. Forgetting them bounds memory by the keys used within
/// one window (a key can hold a user or message id the client chose).
#[derive(Debug, Default)]
struct Windows {
    map: HashMap<(String, u64), Window>,
    next_sweep: Option<Instant>,
}

impl RateLimiter {
    /// Counts one request of `account` against `key` (a bucket and its major
    /// parameter); `bucket` names it in headers.
    pub fn check(
        &self,
        bucket: &str,
        key: &str,
        account: u64,
        limit: u32,
        per: Duration,
    ) -> Decision {
        let now = Instant::now();
        let mut guard = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let Windows { map, next_sweep } = &mut *guard;
        if next_sweep.is_none_or(|at| now >= at) {
            map.retain(|_, w| w.reset_at > now);
            *next_sweep = Some(now + SWEEP_EVERY);
        }
        let w = map.entry((key.to_string(), account)).or_insert(Window {
            remaining: limit,
            reset_at: now + per,
        });
        if now >= w.reset_at {
            w.remaining = limit;
            w.reset_at = now + per;
        }
        let reset_after = (w.reset_at - now).as_secs_f64();
        let unix_now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        let limited = w.remaining == 0;
        if !limited {
            w.remaining -= 1;
        }
        let headers = Headers {
            limit,
            remaining: w.remaining,
            reset: unix_now + reset_after,
            reset_after,
            bucket: bucket_hash(bucket),
        };
        if limited {
            Decision::Limited {
                headers,
                retry_after: reset_after,
                global: false,
            }
        } else {
            Decision::Allowed(headers)
        }
    }
}

/// An opaque, stable bucket id, like Discord's.
pub(crate) fn bucket_hash(bucket: &str) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bucket.hash(&mut h);
    format!("{:016x}", h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_allows_limit_then_limits_until_reset() {
        let rl = RateLimiter::default();
        let per = Duration::from_millis(200);
        for expected in (0..5).rev() {
            match rl.check("messages", "messages:1", 7, 5, per) {
                Decision::Allowed(h) => assert_eq!(h.remaining, expected),
                other => panic!("{other:?}"),
            }
        }
        let Decision::Limited {
            retry_after,
            headers,
            global,
        } = rl.check("messages", "messages:1", 7, 5, per)
        else {
            panic!("sixth request must be limited");
        };
        assert!(!global);
        assert_eq!(headers.remaining, 0);
        assert!(retry_after > 0.0 && retry_after <= 0.2);
        // Another account and another channel have their own windows.
        assert!(matches!(
            rl.check("messages", "messages:1", 8, 5, per),
            Decision::Allowed(_)
        ));
        assert!(matches!(
            rl.check("messages", "messages:2", 7, 5, per),
            Decision::Allowed(_)
        ));
    }

    #[test]
    fn windows_that_have_reset_are_forgotten() {
        let rl = RateLimiter::default();
        let short = Duration::ZERO;
        // Keys a client chose (user ids in a path), each in its own window.
        for user in 0..1000 {
            rl.check("users", &format!("GET /users/{user}:"), 7, 5, short);
        }
        rl.check("global", "global", 7, 50, Duration::from_secs(3600));
        // The next sweep is due a minute later: pretend it is now.
        rl.windows.lock().unwrap().next_sweep = Some(Instant::now());
        rl.check("global", "global", 7, 50, Duration::from_secs(3600));
        let windows = rl.windows.lock().unwrap();
        assert_eq!(windows.map.len(), 1, "only the live global window remains");
        assert_eq!(windows.map[&("global".to_string(), 7)].remaining, 48);
    }
}
