//! Injected faults: forced HTTP errors on routes, withheld heartbeat ACKs.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// A forced answer on matching REST requests.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct HttpFault {
    /// `GET`, `POST`, ...; any method when absent.
    #[serde(default)]
    pub method: Option<String>,
    /// A path under `/api/v10`, `*` matching one segment: `/channels/*/messages`.
    pub path: String,
    /// 429 (a real rate limit answer) or a 5xx.
    pub status: u16,
    /// For how long; until cleared when absent (unless `count` is set).
    #[serde(default, with = "super::config::opt_humantime")]
    pub duration: Option<Duration>,
    /// How many requests; unlimited when absent.
    #[serde(default)]
    pub count: Option<u32>,
}

#[derive(Debug)]
struct ActiveFault {
    fault: HttpFault,
    until: Option<Instant>,
    remaining: Option<u32>,
}

#[derive(Debug, Default)]
pub struct Faults {
    http: Mutex<Vec<ActiveFault>>,
    withheld_acks: Mutex<HashSet<u64>>,
    /// Accounts whose IDENTIFY and RESUME are refused (a gateway outage for
    /// them), with how many attempts were refused since the outage began.
    refused: Mutex<HashMap<u64, u64>>,
}

impl Faults {
    pub fn add_http(&self, fault: HttpFault) -> Result<(), String> {
        if fault.status != 429 && !(500..=599).contains(&fault.status) {
            return Err(format!("status {} is not 429 or 5xx", fault.status));
        }
        let until = fault.duration.map(|d| Instant::now() + d);
        let remaining = fault.count;
        self.http
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(ActiveFault {
                fault,
                until,
                remaining,
            });
        Ok(())
    }

    /// The status to force on this request, if any (and uses one count).
    pub fn http_status(&self, method: &str, path: &str) -> Option<u16> {
        let mut faults = self.http.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        faults.retain(|f| f.until.is_none_or(|u| u > now) && f.remaining != Some(0));
        let f = faults.iter_mut().find(|f| {
            f.fault
                .method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(method))
                && path_matches(&f.fault.path, path)
        })?;
        if let Some(n) = &mut f.remaining {
            *n -= 1;
        }
        Some(f.fault.status)
    }

    pub fn clear(&self) {
        self.http.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.withheld_acks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    pub fn set_heartbeat_acks(&self, account: u64, enabled: bool) {
        let mut set = self.withheld_acks.lock().unwrap_or_else(|p| p.into_inner());
        if enabled {
            set.remove(&account);
        } else {
            set.insert(account);
        }
    }

    pub fn set_gateway_refused(&self, account: u64, refused: bool) {
        let mut map = self.refused.lock().unwrap_or_else(|p| p.into_inner());
        if refused {
            map.insert(account, 0);
        } else {
            map.remove(&account);
        }
    }

    /// Whether the account's IDENTIFY or RESUME is refused now; counts the
    /// refusal.
    pub fn gateway_refused(&self, account: u64) -> bool {
        match self
            .refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&account)
        {
            Some(count) => {
                *count += 1;
                true
            }
            None => false,
        }
    }

    /// IDENTIFY and RESUME attempts refused since the account's outage
    /// began (`None`: no outage).
    pub fn refused_attempts(&self, account: u64) -> Option<u64> {
        self.refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&account)
            .copied()
    }

    pub fn acks_heartbeats(&self, account: u64) -> bool {
        !self
            .withheld_acks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&account)
    }
}

fn path_matches(pattern: &str, path: &str) -> bool {
    let p: Vec<&str> = pattern.trim_matches('/').split('/').collect();
    let q: Vec<&str> = path.trim_matches('/').split('/').collect();
    p.len() == q.len() && p.iter().zip(&q).all(|(a, b)| *a == "*" || a == b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn route_patterns_and_counts() {
        let f = Faults::default();
        f.add_http(HttpFault {
            method: Some("POST".into()),
            path: "/channels/*/messages".into(),
            status: 429,
            duration: None,
            count: Some(2),
        })
        .unwrap();
        assert_eq!(f.http_status("GET", "/channels/1/messages"), None);
        assert_eq!(f.http_status("POST", "/channels/1/messages/2"), None);
        assert_eq!(f.http_status("POST", "/channels/1/messages"), Some(429));
        assert_eq!(f.http_status("post", "/channels/9/messages"), Some(429));
        assert_eq!(
            f.http_status("POST", "/channels/1/messages"),
            None,
            "count used up"
        );
        assert!(
            f.add_http(HttpFault {
                method: None,
                path: "/x".into(),
                status: 404,
                duration: None,
                count: None
            })
            .is_err()
        );
    }
}
