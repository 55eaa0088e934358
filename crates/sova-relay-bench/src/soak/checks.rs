//! The checks that need several clients' accounts at once: the members' final views and
//! `seq`s per session, and each abuser life against its witness and the limiter.

use std::collections::{BTreeMap, HashSet};

use uuid::Uuid;

use super::ctx::{Settings, Summary};
use super::receiver::Books;
use super::verdict::Inv;

/// Per session: the silent members agree on the last `seq` (they must all have every
/// broadcast), each sender's span of `seq`s is exactly what it received plus what it sent,
/// and every member's view of the session is the session.
/// In a cluster (`contiguous` false) seqs skip, so a span says nothing: not accounted.
pub fn sessions(summaries: &[Summary], books: &Books, contiguous: bool) {
    let mut by_session: BTreeMap<&str, Vec<&Summary>> = BTreeMap::new();
    for summary in summaries {
        by_session
            .entry(&summary.session)
            .or_default()
            .push(summary);
    }
    let verdicts = &books.verdicts;
    for (session, members) in by_session {
        let last = members.iter().map(|m| m.last_seq).max().unwrap_or(0);
        // Only a member that sends nothing sees the session's last seq for sure.
        let last_known = members.iter().any(|m| m.silent);
        let ids: HashSet<Uuid> = members.iter().map(|m| m.id).collect();
        for member in &members {
            if member.silent {
                verdicts.check(Inv::SeqContiguous, member.last_seq == last, || {
                    format!(
                        "{session}: {} ended at seq {}, the session at {last}",
                        member.name, member.last_seq
                    )
                });
            } else if member.accountable && last_known && contiguous {
                let span = last - member.base_seq;
                verdicts.check(
                    Inv::SeqAccounting,
                    span == member.received + member.own,
                    || {
                        format!(
                        "{session}: {} saw seqs {}..={last} ({span}) but received {} and sent {}",
                        member.name, member.base_seq + 1, member.received, member.own
                    )
                    },
                );
            }
            let mut view = member.view.clone();
            view.insert(member.id);
            verdicts.check(Inv::Membership, view == ids, || {
                let extra = view.difference(&ids).count();
                let missing = ids.difference(&view).count();
                format!(
                    "{session}: {}'s view has {extra} stale and lacks {missing} members",
                    member.name
                )
            });
        }
    }
}

/// Each abuser life: its witness saw it leave; the relay relayed at least the burst (or
/// all it sent) and at most the burst plus the refill over its life; it got at most one
/// rate-limit error a second, and one at least if anything was dropped.
pub fn abusers(books: &Books, settings: &Settings) {
    let burst = u64::from(settings.rate_limit);
    let per_sec = f64::from(settings.rate_limit) / 60.0;
    for (life, witnessed) in books.ledger.abusers() {
        let verdicts = &books.verdicts;
        let Some(relayed) = witnessed else {
            verdicts.fail(Inv::RateLimit, || {
                format!("{}: its witness never saw it leave", life.name)
            });
            continue;
        };
        let most = burst + (life.active_secs * per_sec).ceil() as u64 + 1;
        let least = life.updates.min(burst);
        verdicts.check(Inv::RateLimit, (least..=most).contains(&relayed), || {
            format!(
                "{}: {relayed} of {} updates relayed over {:.1} s; the limiter allows {least}..={most}",
                life.name, life.updates, life.active_secs
            )
        });
        let dropped = life.updates + life.pings > relayed + life.pongs;
        let most_errors = life.active_secs.ceil() as u64 + 1;
        let errors_ok = life.errors <= most_errors && (life.errors > 0) == dropped;
        verdicts.check(Inv::RateLimit, errors_ok, || {
            format!(
                "{}: {} rate-limit errors over {:.1} s (dropped anything: {dropped})",
                life.name, life.errors, life.active_secs
            )
        });
    }
}
