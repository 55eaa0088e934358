//! Churn mode: clients that keep joining and leaving the groups while the others publish.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{Receiver, Shared, Workload};
use crate::proto::{self, ClientSpec};
use crate::report::Churn;

/// Clients that join a group, stay `churn_stay`, leave, and start over until the end.
pub(super) struct Churners {
    tasks: JoinSet<()>,
    joins: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
}

impl Churners {
    pub(super) async fn finish(mut self, start: Instant) -> Churn {
        while self.tasks.join_next().await.is_some() {}
        let joins = self.joins.load(Ordering::Relaxed);
        Churn {
            joins,
            failed: self.failed.load(Ordering::Relaxed),
            joins_per_s: joins as f64 / start.elapsed().as_secs_f64().max(1e-9),
        }
    }
}

pub(super) fn spawn_churners(
    workload: &Workload,
    payload: &Arc<Vec<u8>>,
    shared: &Arc<Shared>,
    end: Instant,
) -> Churners {
    let joins = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut tasks = JoinSet::new();
    for churner in 0..workload.churners {
        let (joins, failed, shared, payload) = (
            joins.clone(),
            failed.clone(),
            shared.clone(),
            payload.clone(),
        );
        let (target, addr, version) = (
            workload.target,
            workload.addr_of(churner),
            workload.sova_version.clone(),
        );
        let group = churner % workload.groups.max(1);
        let stay = workload.churn_stay;
        tasks.spawn(async move {
            let mut round = 0u64;
            while Instant::now() < end {
                let spec = ClientSpec {
                    name: &format!("churn{churner}-{round}"),
                    group: &format!("g{group}"),
                    subscribe: true,
                    payload: &payload,
                    sova_version: &version,
                };
                round += 1;
                match proto::connect(target, addr, &spec).await {
                    Ok((mut reader, writer)) => {
                        joins.fetch_add(1, Ordering::Relaxed);
                        let mut discard = Receiver {
                            shared: &shared,
                            me: None,
                            counted: false,
                            latencies: Vec::new(),
                        };
                        let leave = tokio::time::sleep(stay.min(end.saturating_duration_since(Instant::now())));
                        tokio::pin!(leave);
                        loop {
                            tokio::select! {
                                _ = &mut leave => break,
                                read = reader.read(&mut discard) => if !matches!(read, Ok(true)) { break },
                            }
                        }
                        drop((reader, writer));
                    }
                    Err(err) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        shared.note(format!("churn join failed: {err}"));
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
    }
    Churners {
        tasks,
        joins,
        failed,
    }
}
