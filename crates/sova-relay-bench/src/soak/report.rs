//! The soak's report: what happened, each invariant with how often it was checked and
//! violated (and the first violations), the RSS series, the metrics comparison, the result.

use std::fmt::Write;

use super::ctx::Ctx;
use super::expect::Rel;
use super::ledger::get;
use super::verdict::ALL;
use super::{Conducted, Options};

const MIB: f64 = 1024.0;

/// Renders the whole report.
pub fn render(ctx: &Ctx, options: &Options, header: &str, run: &Conducted) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "== sova-relay soak: {} s disturbed, {:.0} s in all, seed {} ==\n{header}",
        options.duration.as_secs(),
        run.elapsed.as_secs_f64(),
        options.seed
    );
    let steps: Vec<String> = run
        .steps
        .iter()
        .map(|(step, took)| format!("{step} {:.1} s", took.as_secs_f64()))
        .collect();
    let _ = writeln!(out, "end of run: {}", steps.join(", "));
    activity(&mut out, ctx);
    invariants(&mut out, ctx);
    rss(&mut out, run);
    metrics(&mut out, run);
    let failed = ctx.books.verdicts.total_failed();
    let exit = match &run.exit {
        Ok(status) => status.to_string(),
        Err(why) => why.clone(),
    };
    let _ = writeln!(out, "relay after SIGTERM: {exit}");
    let _ = if failed == 0 {
        writeln!(out, "RESULT: PASS (no violation)")
    } else {
        writeln!(out, "RESULT: FAIL ({failed} violations)")
    };
    out
}

fn activity(out: &mut String, ctx: &Ctx) {
    let t = &ctx.books.tally;
    let abusers = ctx.books.ledger.abusers();
    let sent: u64 = abusers.iter().map(|(l, _)| l.updates).sum();
    let relayed: u64 = abusers.iter().map(|(_, seen)| seen.unwrap_or(0)).sum();
    let errors: u64 = abusers.iter().map(|(l, _)| l.errors).sum();
    let _ = writeln!(out, "activity:");
    let _ = writeln!(
        out,
        "  registrations {}, well-behaved updates {}, broadcasts received live {} + replayed {}",
        get(&t.registrations),
        get(&t.updates),
        get(&t.received_live),
        get(&t.received_replayed)
    );
    let _ = writeln!(
        out,
        "  connections: {} framed TCP (every kind of client); well-behaved clients and slow consumers also {} framed TLS, {} WebSocket, {} WebSocket over TLS",
        get(&t.framed_connections),
        get(&t.tls_connections),
        get(&t.websocket_connections),
        get(&t.wss_connections)
    );
    let _ = writeln!(
        out,
        "  resuming clients: {} drops (RST), resumed ok {}, resync_required {}",
        get(&t.drops),
        get(&t.resumes_ok),
        get(&t.resumes_resync)
    );
    if ctx.cluster() {
        let _ = writeln!(
            out,
            "  cluster: {} nodes; {} resumes on another node than the dropped connection's",
            ctx.nodes.len(),
            get(&t.resumes_moved)
        );
    }
    let _ = writeln!(
        out,
        "  churn: {} joins, {} left by FIN, {} by RST, {} kicked",
        get(&t.churn_joins),
        get(&t.churn_closed),
        get(&t.churn_reset),
        get(&t.kicks)
    );
    let _ = writeln!(
        out,
        "  slow consumers: {} started, {} dropped; abusers: {} lives, {sent} updates sent, {relayed} relayed, {errors} rate-limit errors",
        get(&t.slow_started),
        get(&t.slow_dropped),
        abusers.len()
    );
    let _ = writeln!(
        out,
        "  bad input: {} (HTTP requests in all: {})",
        get(&t.bad_inputs),
        get(&t.http_requests)
    );
}

fn invariants(out: &mut String, ctx: &Ctx) {
    let verdicts = &ctx.books.verdicts;
    let _ = writeln!(out, "invariants:{:>38}{:>12}", "checked", "violated");
    for inv in ALL {
        let (checked, failed) = verdicts.counts(inv);
        let mark = if failed > 0 { "FAIL" } else { " ok " };
        let _ = writeln!(
            out,
            "  [{mark}] {:<36}{checked:>10}{failed:>12}",
            inv.name()
        );
        for example in verdicts.examples(inv) {
            let _ = writeln!(out, "         - {example}");
        }
    }
}

fn rss(out: &mut String, run: &Conducted) {
    let Some(j) = &run.rss else {
        let _ = writeln!(out, "rss: not judged (fewer than 8 samples)");
        return;
    };
    let (min, median, max) = j.min_median_max;
    let growth = j.late as f64 - j.early as f64;
    let _ = writeln!(
        out,
        "rss: {} samples, min/median/max {:.1}/{:.1}/{:.1} MiB; 2nd-quarter median {:.1} MiB, last-quarter median {:.1} MiB ({:+.2} MiB, allowed +{:.2}); slope after warm-up {:+.3} MiB/min: {}",
        j.count,
        min as f64 / MIB,
        median as f64 / MIB,
        max as f64 / MIB,
        j.early as f64 / MIB,
        j.late as f64 / MIB,
        growth / MIB,
        j.allowed_kib as f64 / MIB,
        j.slope_kib_per_min / MIB,
        if j.flat { "flat" } else { "GROWING" }
    );
    let tenths: Vec<String> = j
        .tenths
        .iter()
        .map(|k| format!("{:.1}", *k as f64 / MIB))
        .collect();
    let _ = writeln!(out, "rss by tenth of the run, MiB: {}", tenths.join(" "));
    let _ = writeln!(
        out,
        "relay CPU: {:.1} s over {:.0} s ({:.1} % of one core)",
        j.cpu_secs,
        j.span_secs,
        100.0 * j.cpu_secs / j.span_secs.max(1.0)
    );
}

fn metrics(out: &mut String, run: &Conducted) {
    let _ = writeln!(out, "metrics (relay vs clients):");
    for row in &run.rows {
        let rel = match row.rel {
            Rel::Eq => "==",
            Rel::Ge => ">=",
        };
        let mark = if row.ok() { " ok " } else { "FAIL" };
        let _ = writeln!(
            out,
            "  [{mark}] {:<70} {:>10} {rel} {:<10} {}",
            row.series, row.relay as i64, row.clients as i64, row.why
        );
    }
}
