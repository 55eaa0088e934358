//! The invariants the soak checks, how often each was checked, and every violation (the
//! first few of each kind kept with their details for the report).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// One invariant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Inv {
    /// Every update arrives intact (checksum) and attributed to the instance that sent it.
    Intact,
    /// No instance ever receives its own updates.
    NoEcho,
    /// Per source, counters +1 at a time: no duplicate, no gap; a source that joined after
    /// the receiver is seen from its first update.
    SourceOrder,
    /// When a source leaves (or at the end), the receiver has seen its last update.
    RunTail,
    /// `seq` strictly increases at every receiver, across resumes.
    SeqOrder,
    /// Receivers that send nothing see every `seq` of their session: no gap, no duplicate,
    /// across resumes too.
    SeqContiguous,
    /// A sender's received broadcasts plus its own updates fill its span of `seq`s exactly.
    SeqAccounting,
    /// `InstanceConnected`/`InstanceDisconnected` exactly once per registration, broadcasts
    /// only from current members, and every member's view of its session equal at the end.
    Membership,
    /// A resume within the history's bounds is answered `ok`.
    Resume,
    /// Well-behaved instances never get an `Error`, a refusal or a disconnection.
    Undisturbed,
    /// An abuser's updates are relayed within the limit: at least the burst, at most burst
    /// plus refill; at most one rate-limit `Error` a second.
    RateLimit,
    /// A kick answers 200, the instance is told `Kicked by operator` and closed.
    Kick,
    /// A consumer that never reads is dropped.
    SlowConsumer,
    /// Bad input gets its documented reaction.
    BadInput,
    /// `/healthz`, `/readyz`, `/api/status` and `/metrics` answer 200 throughout, and no
    /// counter ever decreases.
    Http,
    /// The relay's resident memory stays flat after warm-up.
    Rss,
    /// The relay's `/metrics` agree with what the clients counted.
    Metrics,
    /// The relay runs throughout and exits 0 on SIGTERM, telling every instance.
    Process,
}

/// Every invariant, in report order.
pub const ALL: [Inv; 18] = [
    Inv::Intact,
    Inv::NoEcho,
    Inv::SourceOrder,
    Inv::RunTail,
    Inv::SeqOrder,
    Inv::SeqContiguous,
    Inv::SeqAccounting,
    Inv::Membership,
    Inv::Resume,
    Inv::Undisturbed,
    Inv::RateLimit,
    Inv::Kick,
    Inv::SlowConsumer,
    Inv::BadInput,
    Inv::Http,
    Inv::Rss,
    Inv::Metrics,
    Inv::Process,
];

impl Inv {
    /// Short name in the report.
    pub fn name(self) -> &'static str {
        match self {
            Inv::Intact => "intact and attributed",
            Inv::NoEcho => "never its own updates",
            Inv::SourceOrder => "per-source exactly once, in order",
            Inv::RunTail => "last update seen before departure",
            Inv::SeqOrder => "seq strictly increasing",
            Inv::SeqContiguous => "seq without gap (listeners, resumes)",
            Inv::SeqAccounting => "seq span = received + own",
            Inv::Membership => "membership exactly once",
            Inv::Resume => "resume within history is ok",
            Inv::Undisturbed => "well-behaved undisturbed",
            Inv::RateLimit => "rate limit enforced",
            Inv::Kick => "kicks",
            Inv::SlowConsumer => "slow consumers dropped",
            Inv::BadInput => "bad input answered as documented",
            Inv::Http => "HTTP endpoints healthy",
            Inv::Rss => "RSS flat after warm-up",
            Inv::Metrics => "/metrics agree with clients",
            Inv::Process => "relay process",
        }
    }

    fn index(self) -> usize {
        ALL.iter().position(|&inv| inv == self).unwrap_or(0)
    }
}

/// Examples kept per invariant.
const EXAMPLES: usize = 5;

/// Checks and violations, shared by every task.
#[derive(Default)]
pub struct Verdicts {
    checked: [AtomicU64; ALL.len()],
    failed: [AtomicU64; ALL.len()],
    examples: Mutex<Vec<(Inv, String)>>,
}

impl Verdicts {
    /// One check of `inv` held.
    pub fn pass(&self, inv: Inv) {
        self.checked[inv.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// One check of `inv` failed; `detail` says how (kept for the first few).
    pub fn fail(&self, inv: Inv, detail: impl FnOnce() -> String) {
        self.checked[inv.index()].fetch_add(1, Ordering::Relaxed);
        let before = self.failed[inv.index()].fetch_add(1, Ordering::Relaxed);
        if before < EXAMPLES as u64 {
            let detail = detail();
            let mut examples = self.examples.lock().unwrap_or_else(|p| p.into_inner());
            examples.push((inv, detail));
        }
    }

    /// Passes or fails `inv` on `ok`.
    pub fn check(&self, inv: Inv, ok: bool, detail: impl FnOnce() -> String) {
        if ok {
            self.pass(inv);
        } else {
            self.fail(inv, detail);
        }
    }

    /// (checked, failed) for `inv`.
    pub fn counts(&self, inv: Inv) -> (u64, u64) {
        (
            self.checked[inv.index()].load(Ordering::Relaxed),
            self.failed[inv.index()].load(Ordering::Relaxed),
        )
    }

    /// Total violations.
    pub fn total_failed(&self) -> u64 {
        ALL.iter().map(|&inv| self.counts(inv).1).sum()
    }

    /// The kept details of `inv`'s violations.
    pub fn examples(&self, inv: Inv) -> Vec<String> {
        let examples = self.examples.lock().unwrap_or_else(|p| p.into_inner());
        examples
            .iter()
            .filter(|(i, _)| *i == inv)
            .map(|(_, text)| text.clone())
            .collect()
    }
}
