//! Failed sign-ins per client address: a small token bucket, so a browser (or a
//! script) cannot try tokens at the speed of the database.
//!
//! Each address may fail [`BURST`] times at once and earns one more try every
//! [`REFILL`]. While its bucket is empty every sign-in from it — also with a
//! right token, which is not even looked up — gets `429` with `Retry-After`.
//! A successful sign-in costs nothing. The table lives in the gateway's memory
//! (several gateways each keep their own) and forgets an address once its
//! bucket is full again.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failed sign-ins an address may make at once.
pub const BURST: u32 = 10;
/// One more failed sign-in is allowed after this long.
pub const REFILL: Duration = Duration::from_secs(6);
/// Addresses remembered at most (a flood of addresses drops the oldest).
const MAX_ADDRESSES: usize = 10_000;

/// The failed sign-ins of each address.
#[derive(Debug, Default)]
pub struct Throttle {
    /// Per address: failures not yet refilled, and when the count was last updated.
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl Throttle {
    /// `Err(wait)` when `ip` has no try left; else `Ok`.
    pub fn check(&self, ip: IpAddr) -> Result<(), Duration> {
        self.check_at(ip, Instant::now())
    }

    /// Counts a failed sign-in of `ip`.
    pub fn failed(&self, ip: IpAddr) {
        self.failed_at(ip, Instant::now())
    }

    fn check_at(&self, ip: IpAddr, now: Instant) -> Result<(), Duration> {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        let Some(entry) = map.get_mut(&ip) else {
            return Ok(());
        };
        refill(entry, now);
        if entry.0 == 0 {
            map.remove(&ip);
            return Ok(());
        }
        if entry.0 < BURST {
            return Ok(());
        }
        Err(REFILL.saturating_sub(now.duration_since(entry.1)))
    }

    fn failed_at(&self, ip: IpAddr, now: Instant) {
        let mut map = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_ADDRESSES && !map.contains_key(&ip) {
            if let Some(oldest) = map.iter().min_by_key(|(_, v)| v.1).map(|(k, _)| *k) {
                map.remove(&oldest);
            }
        }
        let entry = map.entry(ip).or_insert((0, now));
        refill(entry, now);
        entry.0 = (entry.0 + 1).min(BURST);
    }
}

/// Takes back one failure per whole [`REFILL`] since the last update.
fn refill(entry: &mut (u32, Instant), now: Instant) {
    let steps = (now.duration_since(entry.1).as_millis() / REFILL.as_millis()) as u32;
    if steps > 0 {
        entry.0 = entry.0.saturating_sub(steps);
        entry.1 += REFILL * steps;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_held_after_its_burst_and_freed_by_time() {
        let t = Throttle::default();
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let b: IpAddr = "192.0.2.2".parse().expect("ip");
        let t0 = Instant::now();
        for _ in 0..BURST {
            assert!(t.check_at(a, t0).is_ok());
            t.failed_at(a, t0);
        }
        let wait = t.check_at(a, t0).expect_err("held after the burst");
        assert!(wait > Duration::ZERO && wait <= REFILL, "{wait:?}");
        assert!(t.check_at(b, t0).is_ok(), "another address is not held");
        // One refill gives exactly one more try.
        let t1 = t0 + REFILL;
        assert!(t.check_at(a, t1).is_ok());
        t.failed_at(a, t1);
        assert!(t.check_at(a, t1).is_err());
        // A full refill forgets the address.
        let t2 = t1 + REFILL * BURST;
        assert!(t.check_at(a, t2).is_ok());
        assert!(t.failures.lock().expect("lock").is_empty());
    }
}
