//! Who may connect, checked right after accept and before any byte is read: IP allow/deny
//! rules, a global connection cap, per-IP connection caps and rates, and lockout of an IP
//! after repeated failed registrations.

use std::collections::HashMap;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use ipnet::IpNet;

use crate::Config;

/// Why a connection was refused at the door.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// An `--allow`/`--deny` rule.
    Denied,
    /// `--max-connections` open already.
    RelayFull,
    /// `--max-connections-per-ip` open from this IP already.
    TooManyFromIp,
    /// This IP opened connections faster than `--connection-rate-per-ip`.
    TooFast,
    /// This IP failed to register too often and is locked out.
    LockedOut,
}

impl Refusal {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Refusal::Denied => "acl_denied",
            Refusal::RelayFull => "max_connections",
            Refusal::TooManyFromIp => "max_connections_per_ip",
            Refusal::TooFast => "connection_rate",
            Refusal::LockedOut => "locked_out",
        }
    }
}

/// The door of the relay.
pub(crate) struct Gatekeeper {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
    max_connections: usize,
    max_per_ip: usize,
    max_failures: u32,
    lockout: Duration,
    rate: Option<DefaultKeyedRateLimiter<IpAddr>>,
    state: Mutex<GateState>,
}

#[derive(Default)]
struct GateState {
    open: usize,
    /// Only IPs with open connections, recent failures or a lockout have an entry.
    per_ip: HashMap<IpAddr, IpState>,
}

#[derive(Default)]
struct IpState {
    open: usize,
    failures: u32,
    first_failure: Option<Instant>,
    locked_until: Option<Instant>,
}

impl IpState {
    fn forgettable(&self, now: Instant) -> bool {
        self.open == 0 && self.failures == 0 && self.locked_until.is_none_or(|until| until <= now)
    }
}

impl Gatekeeper {
    pub(crate) fn new(config: &Config) -> Self {
        let rate = NonZeroU32::new(config.connection_rate_per_ip)
            .map(|n| RateLimiter::keyed(Quota::per_minute(n)));
        Gatekeeper {
            allow: config.allow.iter().map(IpNet::trunc).collect(),
            deny: config.deny.iter().map(IpNet::trunc).collect(),
            max_connections: config.max_connections,
            max_per_ip: config.max_connections_per_ip,
            max_failures: config.max_failed_registrations,
            lockout: config.lockout,
            rate,
            state: Mutex::new(GateState::default()),
        }
    }

    /// Admits a connection from `ip`, or says why not. The permit frees its place when
    /// dropped.
    pub(crate) fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<Permit, Refusal> {
        let ip = ip.to_canonical();
        if !self.allowed(ip) {
            return Err(Refusal::Denied);
        }
        let now = Instant::now();
        let mut state = self.lock();
        if state.open >= self.max_connections {
            return Err(Refusal::RelayFull);
        }
        let entry = state.per_ip.entry(ip).or_default();
        if entry.locked_until.is_some_and(|until| until > now) {
            return Err(Refusal::LockedOut);
        }
        if self.max_per_ip > 0 && entry.open >= self.max_per_ip {
            return Err(Refusal::TooManyFromIp);
        }
        if let Some(rate) = &self.rate {
            if rate.check_key(&ip).is_err() {
                return Err(Refusal::TooFast);
            }
        }
        entry.open += 1;
        state.open += 1;
        Ok(Permit {
            gate: self.clone(),
            ip,
        })
    }

    fn allowed(&self, ip: IpAddr) -> bool {
        if self.deny.iter().any(|net| net.contains(&ip)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|net| net.contains(&ip))
    }

    /// Counts a failed registration (bad token or version); enough of them within the
    /// lockout period lock the IP out for that long.
    pub(crate) fn registration_failed(&self, ip: IpAddr) {
        if self.max_failures == 0 {
            return;
        }
        let now = Instant::now();
        let mut state = self.lock();
        let entry = state.per_ip.entry(ip.to_canonical()).or_default();
        if entry.first_failure.is_none_or(|at| now - at > self.lockout) {
            entry.first_failure = Some(now);
            entry.failures = 0;
        }
        entry.failures += 1;
        if entry.failures >= self.max_failures {
            entry.locked_until = Some(now + self.lockout);
            entry.failures = 0;
            entry.first_failure = None;
        }
    }

    /// Forgets expired lockouts, failures and rate-limiter keys, so the maps stay bounded
    /// by the IPs seen recently. Called on a timer.
    pub(crate) fn forget_stale(&self) {
        let now = Instant::now();
        let lockout = self.lockout;
        self.lock().per_ip.retain(|_, entry| {
            if entry.first_failure.is_some_and(|at| now - at > lockout) {
                entry.failures = 0;
                entry.first_failure = None;
            }
            if entry.locked_until.is_some_and(|until| until <= now) {
                entry.locked_until = None;
            }
            !entry.forgettable(now)
        });
        if let Some(rate) = &self.rate {
            rate.retain_recent();
            rate.shrink_to_fit();
        }
    }

    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// An admitted connection's place; released on drop.
pub(crate) struct Permit {
    gate: Arc<Gatekeeper>,
    ip: IpAddr,
}

impl Drop for Permit {
    fn drop(&mut self) {
        let now = Instant::now();
        let mut state = self.gate.lock();
        state.open -= 1;
        if let Some(entry) = state.per_ip.get_mut(&self.ip) {
            entry.open -= 1;
            if entry.forgettable(now) {
                state.per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn gate(args: &[&str]) -> Arc<Gatekeeper> {
        let config =
            Config::try_parse_from(std::iter::once("sova-relay").chain(args.iter().copied()))
                .unwrap();
        Arc::new(Gatekeeper::new(&config))
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn deny_wins_and_allow_limits() {
        let gate = gate(&["--allow", "127.0.0.0/8,::1/128", "--deny", "127.0.0.2/32"]);
        assert!(gate.admit(ip("127.0.0.1")).is_ok());
        assert!(gate.admit(ip("::1")).is_ok());
        assert_eq!(gate.admit(ip("127.0.0.2")).err(), Some(Refusal::Denied));
        assert_eq!(gate.admit(ip("192.0.2.1")).err(), Some(Refusal::Denied));
        assert!(
            gate.admit(ip("::ffff:127.0.0.1")).is_ok(),
            "IPv4-mapped is IPv4"
        );
        assert_eq!(
            gate.admit(ip("::ffff:127.0.0.2")).err(),
            Some(Refusal::Denied)
        );
    }

    #[test]
    fn per_ip_and_global_caps_release_on_drop() {
        let gate = gate(&["--max-connections-per-ip", "2", "--max-connections", "3"]);
        let a = gate.admit(ip("192.0.2.1")).unwrap();
        let _b = gate.admit(ip("192.0.2.1")).unwrap();
        assert_eq!(
            gate.admit(ip("192.0.2.1")).err(),
            Some(Refusal::TooManyFromIp)
        );
        let _c = gate.admit(ip("192.0.2.2")).unwrap();
        assert_eq!(gate.admit(ip("192.0.2.3")).err(), Some(Refusal::RelayFull));
        drop(a);
        assert!(gate.admit(ip("192.0.2.1")).is_ok());
    }

    #[test]
    fn repeated_failures_lock_an_ip_out() {
        let gate = gate(&["--max-failed-registrations", "3"]);
        for _ in 0..2 {
            gate.registration_failed(ip("192.0.2.9"));
        }
        assert!(gate.admit(ip("192.0.2.9")).is_ok());
        gate.registration_failed(ip("192.0.2.9"));
        assert_eq!(gate.admit(ip("192.0.2.9")).err(), Some(Refusal::LockedOut));
        assert!(
            gate.admit(ip("192.0.2.8")).is_ok(),
            "others are not affected"
        );
    }

    #[test]
    fn connection_rate_is_per_ip() {
        let gate = gate(&[
            "--connection-rate-per-ip",
            "2",
            "--max-connections-per-ip",
            "0",
        ]);
        let _a = gate.admit(ip("192.0.2.1")).unwrap();
        let _b = gate.admit(ip("192.0.2.1")).unwrap();
        assert_eq!(gate.admit(ip("192.0.2.1")).err(), Some(Refusal::TooFast));
        assert!(gate.admit(ip("192.0.2.2")).is_ok());
    }

    #[test]
    fn the_map_forgets_ips_without_connections() {
        let gate = gate(&[]);
        drop(gate.admit(ip("192.0.2.1")).unwrap());
        gate.forget_stale();
        assert!(gate.lock().per_ip.is_empty());
    }
}
