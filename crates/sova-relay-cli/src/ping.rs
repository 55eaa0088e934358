//! `ping`: round-trip times to the relay (it answers only registered instances).

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use sova_relay_client::{ReconnectConfig, RelayClient};
use tracing::info;

use crate::output::print_line;
use crate::{client_config, Target};

/// Arguments of `ping`.
#[derive(Debug, Args)]
pub struct PingArgs {
    #[command(flatten)]
    target: Target,
    /// Number of round trips to measure.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..))]
    count: u32,
    /// Name to register as (default: `ping-` and random hex).
    #[arg(long)]
    name: Option<String>,
    /// Session token (the default session if absent).
    #[arg(long, env = "SOVA_RELAY_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

/// Runs `ping` and prints `rtt min/median/max = a/b/c ms (n pings)` on stdout.
pub async fn run(args: PingArgs, sova_version: &str) -> anyhow::Result<()> {
    let name = args
        .name
        .unwrap_or_else(|| format!("ping-{:08x}", fastrand::u32(..)));
    let config = client_config(&args.target, &name, args.token.as_deref(), sova_version)
        .reconnect(ReconnectConfig::disabled())
        .resume(false);
    let addr = args.target.address();
    let client = RelayClient::connect(&addr, config)
        .await
        .with_context(|| format!("registering with {addr} as {name}"))?;
    let mut rtts = Vec::new();
    for seq in 1..=args.count {
        let rtt = client.ping().await.context("ping")?;
        info!(seq, rtt_ms = millis(rtt), "pong");
        rtts.push(rtt);
    }
    let offset = client.clock_offset();
    client.close().await;
    print_line(&summary(&mut rtts))?;
    if let Some(offset) = offset {
        print_line(&format!(
            "clock offset = {:+.3} ms ± {:.3} ms",
            offset.offset_ms,
            millis(offset.error_bound)
        ))?;
    }
    Ok(())
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1000.0
}

/// `rtt min/median/max = a/b/c ms (n pings)`; the median of an even count is the mean of
/// the two middle values.
fn summary(rtts: &mut [Duration]) -> String {
    rtts.sort_unstable();
    let (Some(min), Some(max)) = (rtts.first(), rtts.last()) else {
        return "rtt: no samples".to_owned();
    };
    let mid = rtts.len() / 2;
    let median = if rtts.len() % 2 == 0 {
        (rtts[mid - 1] + rtts[mid]) / 2
    } else {
        rtts[mid]
    };
    format!(
        "rtt min/median/max = {:.3}/{:.3}/{:.3} ms ({} pings)",
        millis(*min),
        millis(median),
        millis(*max),
        rtts.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_orders_and_takes_the_median() {
        let ms = Duration::from_millis;
        assert_eq!(
            summary(&mut [ms(3), ms(1), ms(2)]),
            "rtt min/median/max = 1.000/2.000/3.000 ms (3 pings)"
        );
        assert_eq!(
            summary(&mut [ms(4), ms(1), ms(2), ms(8)]),
            "rtt min/median/max = 1.000/3.000/8.000 ms (4 pings)"
        );
        assert_eq!(summary(&mut []), "rtt: no samples");
    }
}
