//! Publishers: paced (`--rate`) or flat out within a bounded in-flight window, each
//! message stamped with its send time.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::{PublisherState, Shared, STALL_LIMIT};
use crate::clock::now_ns;
use crate::payload::Stamp;
use crate::proto::Writer;

/// When and how much one publisher sends.
#[derive(Clone, Copy)]
pub(super) struct Plan {
    pub(super) start: Instant,
    pub(super) end: Instant,
    pub(super) rate: f64,
    pub(super) window: u64,
    pub(super) max_messages: u64,
}

pub(super) async fn publish(
    mut writer: Writer,
    index: u32,
    shared: Arc<Shared>,
    plan: Plan,
) -> Writer {
    let state = &shared.publishers[index as usize];
    let result = if plan.rate > 0.0 {
        publish_at_rate(&mut writer, index, state, &shared, plan).await
    } else {
        publish_flat_out(&mut writer, index, state, &shared, plan).await
    };
    if let Err(err) = result {
        shared.note(format!("publish failed: {err}"));
    }
    writer
}

async fn send(
    writer: &mut Writer,
    index: u32,
    state: &PublisherState,
    seq: u64,
) -> std::io::Result<()> {
    let stamp = Stamp {
        sent_ns: now_ns(),
        publisher: index,
        seq: seq as u32,
    };
    writer.publish(stamp).await?;
    state.sent.store(seq + 1, Ordering::SeqCst);
    Ok(())
}

async fn publish_at_rate(
    writer: &mut Writer,
    index: u32,
    state: &PublisherState,
    shared: &Shared,
    plan: Plan,
) -> std::io::Result<()> {
    let period = Duration::from_secs_f64(1.0 / plan.rate);
    // Spread publishers over the period (golden-ratio phases) so they do not fire together.
    let phase = (f64::from(index) * 0.618_033_988_75).fract();
    let mut next = plan.start + period.mul_f64(phase);
    let mut seq = 0;
    while next < plan.end && (plan.max_messages == 0 || seq < plan.max_messages) {
        tokio::time::sleep_until(next).await;
        let lag = Instant::now().saturating_duration_since(next);
        shared
            .send_lag
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .saturating_record(u64::try_from(lag.as_nanos()).unwrap_or(u64::MAX).max(1));
        send(writer, index, state, seq).await?;
        seq += 1;
        next += period;
    }
    Ok(())
}

async fn publish_flat_out(
    writer: &mut Writer,
    index: u32,
    state: &PublisherState,
    shared: &Shared,
    plan: Plan,
) -> std::io::Result<()> {
    tokio::time::sleep_until(plan.start).await;
    let high_water = plan.window.max(1) * state.recipients;
    let mut seq = 0;
    let mut progress_at = (Instant::now(), state.delivered.load(Ordering::SeqCst));
    while Instant::now() < plan.end && (plan.max_messages == 0 || seq < plan.max_messages) {
        if state.in_flight() < high_water {
            send(writer, index, state, seq).await?;
            seq += 1;
            continue;
        }
        state.waiting.store(true, Ordering::SeqCst);
        if state.in_flight() > state.low_water {
            let wait = plan
                .end
                .saturating_duration_since(Instant::now())
                .min(Duration::from_millis(200));
            let _ = tokio::time::timeout(wait, state.wake.notified()).await;
        }
        state.waiting.store(false, Ordering::SeqCst);
        let delivered = state.delivered.load(Ordering::SeqCst);
        if delivered != progress_at.1 {
            progress_at = (Instant::now(), delivered);
        } else if progress_at.0.elapsed() > STALL_LIMIT {
            shared.stalled.fetch_add(1, Ordering::Relaxed);
            shared.note(format!(
                "publisher {index} stalled: nothing delivered for {STALL_LIMIT:?}"
            ));
            break;
        }
    }
    Ok(())
}
