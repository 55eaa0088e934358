//! Who takes part in a soak: the long-lived members of every session, and the
//! disturbances (churn, abusers, slow consumers, bad input, kicks, HTTP probes).

use std::sync::Arc;

use tokio::task::JoinSet;

use super::bad::{self, Targets};
use super::client::Sending;
use super::ctx::Ctx;
use super::member::{self, Drops, Plan};
use super::slow::SLOW_SESSION;
use super::{abuse, churn, http, kick, slow};

/// How many of each.
#[derive(Debug, Clone, Copy)]
pub struct Sizes {
    /// Jam sessions.
    pub sessions: usize,
    /// Churn slots per churning session (the first two jam sessions churn).
    pub churners: usize,
    /// Abuse sessions, one abuser at a time in each.
    pub abusers: usize,
    /// Slow consumers at a time in the bulk session.
    pub slow_consumers: usize,
}

const PRESENCE: &[&str] = &["presence"];
const RESUME: &[&str] = &["resume", "presence"];

/// The session of the large updates and their listener.
const BULK: &str = "soak-bulk";

fn jam(i: usize) -> String {
    format!("soak-jam-{i}")
}

/// Every long-lived member.
pub fn members(sizes: Sizes) -> Vec<Plan> {
    let sends = |array| {
        Some(Sending {
            per_sec: (2.0, 5.0),
            filler: (0, 300),
            array,
        })
    };
    let drops = |every_ms| {
        Some(Drops {
            every_ms,
            down_ms: (20, 800),
        })
    };
    let plan = |name: String, session: String, caps, sending, drops| Plan {
        name,
        session,
        caps,
        sending,
        drops,
    };
    let mut plans = Vec::new();
    for i in 0..sizes.sessions {
        plans.push(plan(
            format!("steady-{i}-a"),
            jam(i),
            PRESENCE,
            sends(false),
            None,
        ));
        plans.push(plan(
            format!("steady-{i}-b"),
            jam(i),
            PRESENCE,
            sends(true),
            None,
        ));
        plans.push(plan(format!("listen-{i}"), jam(i), PRESENCE, None, None));
        plans.push(plan(
            format!("resume-{i}"),
            jam(i),
            RESUME,
            sends(false),
            drops((3_000, 10_000)),
        ));
        plans.push(plan(
            format!("rlisten-{i}"),
            jam(i),
            RESUME,
            None,
            drops((2_000, 8_000)),
        ));
    }
    // Large updates to a listener: a flow (~100 KB/s) whose bursts stay far below
    // --max-pending-bytes, so only a stall of seconds could make the listener "slow".
    let bulk = Sending {
        per_sec: (4.0, 8.0),
        filler: (4_096, 24_576),
        array: false,
    };
    plans.push(plan(
        "feeder".into(),
        BULK.into(),
        PRESENCE,
        Some(bulk),
        None,
    ));
    plans.push(plan(
        "bulk-listen".into(),
        BULK.into(),
        PRESENCE,
        None,
        None,
    ));
    if sizes.slow_consumers > 0 {
        // ~1 MB/s: fills a stalled socket's kernel buffers (the relay's send buffer grows
        // to megabytes) and the relay's queue within seconds. No well-behaved receiver
        // here: no reader could be told apart from a slow one at this rate, by design.
        let flood = Sending {
            per_sec: (6.0, 8.0),
            filler: (65_536, 196_608),
            array: false,
        };
        plans.push(plan(
            "slow-feeder".into(),
            SLOW_SESSION.into(),
            PRESENCE,
            Some(flood),
            None,
        ));
    }
    for k in 0..sizes.abusers {
        plans.push(plan(
            format!("witness-{k}"),
            format!("soak-abuse-{k}"),
            PRESENCE,
            None,
            None,
        ));
    }
    plans
}

/// Sessions the long-lived members keep alive.
pub fn sessions(sizes: Sizes) -> u64 {
    (sizes.sessions + 1 + usize::from(sizes.slow_consumers > 0) + sizes.abusers) as u64
}

/// Starts every long-lived member.
pub fn spawn_members(ctx: &Arc<Ctx>, plans: &[Plan], seeds: &mut fastrand::Rng) -> JoinSet<()> {
    let mut set = JoinSet::new();
    for plan in plans {
        set.spawn(member::run(ctx.clone(), plan.clone(), seeds.u64(..)));
    }
    set
}

/// Starts every disturbance; each ends on its own once the run winds down.
pub fn spawn_disturbances(ctx: &Arc<Ctx>, sizes: Sizes, seeds: &mut fastrand::Rng) -> JoinSet<()> {
    let mut set = JoinSet::new();
    for i in 0..sizes.sessions.min(2) {
        for slot in 0..sizes.churners {
            let tag = format!("{i}-{slot}");
            set.spawn(churn::slot(ctx.clone(), jam(i), tag, seeds.u64(..)));
        }
    }
    // Kicks go to the first node: in a cluster most concern another node's instance.
    set.spawn(kick::kicker(ctx.clone(), seeds.u64(..)));
    if ctx.cluster() {
        // A cluster soak: churn and kicks only (abusers, slow consumers, bad input and the
        // HTTP probes concern one node, which the single-relay soak covers).
        return set;
    }
    for k in 0..sizes.abusers {
        set.spawn(abuse::slot(ctx.clone(), k, seeds.u64(..)));
    }
    for k in 0..sizes.slow_consumers {
        set.spawn(slow::slot(ctx.clone(), k, seeds.u64(..)));
    }
    let targets = Arc::new(Targets {
        taken: (0..sizes.sessions)
            .map(|i| (format!("listen-{i}"), jam(i)))
            .collect(),
        sessions: (0..sizes.sessions).map(jam).collect(),
    });
    set.spawn(bad::driver(ctx.clone(), seeds.u64(..), targets));
    set.spawn(http::probe(ctx.clone()));
    set
}
