//! Fixed-window rate limiters keyed by client (and route template).
//!
//! Two uses: admin routes per client and route template (after authentication, so anonymous
//! traffic cannot spend an admin's budget), and failed authentications per client (checked
//! before the lookup: a brute-force throttle). Memory is bounded: at capacity, expired windows
//! are swept, and a client that still does not fit is not tracked (a limiter forgets rather than
//! refusing everyone). Time is passed in.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;

/// Largest number of tracked clients per limiter.
pub const MAX_TRACKED: usize = 100_000;

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limit {
    pub max: u32,
    pub window_secs: f64,
}

/// A refusal: how long to wait.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Exceeded {
    pub retry_after: u64,
    pub limit: Limit,
}

#[derive(Debug)]
pub struct Limiter<K> {
    limit: Limit,
    windows: Mutex<Windows<K>>,
}

#[derive(Debug)]
struct Windows<K> {
    map: HashMap<K, (f64, u32)>,
    /// When the map was last swept at capacity: at most one sweep per second.
    last_sweep: f64,
}

impl<K: Hash + Eq + Clone> Limiter<K> {
    pub fn new(limit: Limit) -> Self {
        Limiter {
            limit,
            windows: Mutex::new(Windows {
                map: HashMap::new(),
                last_sweep: f64::NEG_INFINITY,
            }),
        }
    }

    pub fn limit(&self) -> Limit {
        self.limit
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Windows<K>> {
        match self.windows.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn retry(&self, start: f64, now: f64) -> u64 {
        (start + self.limit.window_secs - now).ceil().max(1.0) as u64
    }

    /// Counts one event for `key`; refuses once `max` events fall in the current window.
    pub fn hit(&self, key: &K, now: f64) -> Result<u32, Exceeded> {
        let mut guard = self.lock();
        let Windows { map: m, last_sweep } = &mut *guard;
        let w = self.limit.window_secs;
        if let Some((start, n)) = m.get_mut(key) {
            // A clock that went back starts a new window rather than blocking for long.
            if now - *start >= w || now < *start {
                *start = now;
                *n = 0;
            }
            if *n >= self.limit.max {
                let s = *start;
                return Err(Exceeded {
                    retry_after: self.retry(s, now),
                    limit: self.limit,
                });
            }
            *n += 1;
            return Ok(self.limit.max - *n);
        }
        if m.len() >= MAX_TRACKED {
            if now - *last_sweep >= 1.0 || now < *last_sweep {
                *last_sweep = now;
                m.retain(|_, (start, _)| now - *start < w && now >= *start);
            }
            if m.len() >= MAX_TRACKED {
                return Ok(self.limit.max);
            }
        }
        if self.limit.max == 0 {
            return Err(Exceeded {
                retry_after: self.retry(now, now),
                limit: self.limit,
            });
        }
        m.insert(key.clone(), (now, 1));
        Ok(self.limit.max - 1)
    }

    /// Whether `key` is over its limit now, without counting.
    pub fn blocked(&self, key: &K, now: f64) -> Option<Exceeded> {
        let m = self.lock();
        let (start, n) = *m.map.get(key)?;
        (now - start < self.limit.window_secs && now >= start && n >= self.limit.max).then(|| {
            Exceeded {
                retry_after: self.retry(start, now),
                limit: self.limit,
            }
        })
    }
}

/// The bucket a client address counts in: IPv4 addresses alone, IPv6 by /64 (one host
/// usually holds a whole /64, so per-address buckets would be free to multiply).
pub fn client_bucket(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => {
            let s = v6.segments();
            std::net::IpAddr::V6(std::net::Ipv6Addr::new(s[0], s[1], s[2], s[3], 0, 0, 0, 0))
        }
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows() {
        let l = Limiter::new(Limit {
            max: 2,
            window_secs: 10.0,
        });
        assert_eq!(l.hit(&1, 0.0), Ok(1));
        assert_eq!(l.hit(&1, 1.0), Ok(0));
        let e = l.hit(&1, 2.0).unwrap_err();
        assert_eq!(e.retry_after, 8);
        assert!(l.blocked(&1, 5.0).is_some());
        assert!(l.blocked(&2, 5.0).is_none());
        assert_eq!(l.hit(&1, 10.0), Ok(1), "new window");
        assert_eq!(l.hit(&1, 3.0), Ok(1), "clock went back: new window");
    }

    #[test]
    fn ipv6_clients_count_per_64() {
        let a: std::net::IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: std::net::IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        assert_eq!(client_bucket(a), client_bucket(b));
        let v4: std::net::IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(client_bucket(v4), v4);
    }
}
