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

#[derive(Debug, Default)]
pub struct RateLimiter {
    windows: Mutex<HashMap<(String, u64), Window>>,
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
        let mut windows = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let w = windows.entry((key.to_string(), account)).or_insert(Window {
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
}
