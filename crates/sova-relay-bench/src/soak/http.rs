//! HTTP on the relay's port, spoken by hand (one request per connection): the probes that
//! run throughout (`/healthz`, `/readyz`, `/api/status`, `/metrics`, whose counters must
//! never decrease), the admin API, and the Prometheus text parser for the final comparison.

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::ctx::{reached, Ctx, Phase};
use super::ledger::add;
use super::verdict::Inv;

/// Longest one request may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// An HTTP response.
#[derive(Debug)]
pub struct Response {
    /// Status code (0 if the relay answered something that is not HTTP).
    pub status: u16,
    /// Body (the whole response if there is no blank line).
    pub body: String,
}

/// Sends raw bytes, reads until the relay closes; the response (or empty if it just closed).
pub async fn raw(addr: SocketAddr, request: &[u8]) -> io::Result<Response> {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        stream.write_all(request).await?;
        let mut bytes = Vec::new();
        stream.read_to_end(&mut bytes).await?;
        Ok::<_, io::Error>(bytes)
    };
    let bytes = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "no HTTP response in time"))??;
    let text = String::from_utf8_lossy(&bytes);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    Ok(Response {
        status,
        body: body.to_owned(),
    })
}

/// One request with `Connection: close`.
pub async fn request(
    ctx: &Ctx,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> io::Result<Response> {
    add(&ctx.books.tally.http_requests, 1);
    let mut text = format!("{method} {path} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    raw(ctx.addr, text.as_bytes()).await
}

/// Prometheus samples: `name{labels}` → value.
#[derive(Debug, Default, Clone)]
pub struct Metrics {
    samples: BTreeMap<String, f64>,
}

impl Metrics {
    /// Parses the text exposition format (comments skipped).
    pub fn parse(text: &str) -> Metrics {
        let samples = text
            .lines()
            .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
            .filter_map(|line| {
                let (series, value) = line.rsplit_once(' ')?;
                Some((series.to_owned(), value.trim().parse().ok()?))
            })
            .collect();
        Metrics { samples }
    }

    /// The value of `series` exactly as written (`name` or `name{label="v"}`); 0 if absent.
    pub fn get(&self, series: &str) -> f64 {
        self.samples.get(series).copied().unwrap_or(0.0)
    }

    /// The sum over every label set of `name`.
    pub fn sum(&self, name: &str) -> f64 {
        self.samples
            .iter()
            .filter(|(series, _)| {
                series
                    .strip_prefix(name)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('{'))
            })
            .map(|(_, value)| value)
            .sum()
    }

    /// Counters (`*_total`) that are lower here than in `earlier`.
    pub fn decreased_since(&self, earlier: &Metrics) -> Vec<String> {
        earlier
            .samples
            .iter()
            .filter(|(series, _)| {
                series
                    .split('{')
                    .next()
                    .is_some_and(|n| n.ends_with("_total"))
            })
            .filter(|(series, before)| self.get(series) < **before)
            .map(|(series, before)| format!("{series}: {before} -> {}", self.get(series)))
            .collect()
    }
}

/// Scrapes `/metrics`.
pub async fn scrape(ctx: &Ctx) -> io::Result<Metrics> {
    let response = request(ctx, "GET", "/metrics", &[]).await?;
    if response.status != 200 {
        return Err(io::Error::other(format!(
            "/metrics answered {}",
            response.status
        )));
    }
    Ok(Metrics::parse(&response.body))
}

/// `GET /metrics` on `addr` (a cluster node), parsed.
pub async fn scrape_at(ctx: &Ctx, addr: SocketAddr) -> io::Result<Metrics> {
    add(&ctx.books.tally.http_requests, 1);
    let request = b"GET /metrics HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n";
    let response = raw(addr, request).await?;
    if response.status != 200 {
        return Err(io::Error::other(format!(
            "/metrics answered {}",
            response.status
        )));
    }
    Ok(Metrics::parse(&response.body))
}

/// Probes the HTTP endpoints every two seconds until the run quiesces.
pub async fn probe(ctx: Arc<Ctx>) {
    let mut phase = ctx.phase.clone();
    let mut last = Metrics::default();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = reached(&mut phase, Phase::Wind) => return,
        }
        for (path, want) in [("/healthz", "ok\n"), ("/readyz", "ready\n")] {
            let response = request(&ctx, "GET", path, &[]).await;
            let ok = matches!(&response, Ok(r) if r.status == 200 && r.body == want);
            ctx.books
                .verdicts
                .check(Inv::Http, ok, || format!("GET {path}: {response:?}"));
        }
        let status = request(&ctx, "GET", "/api/status", &[]).await;
        let ok = matches!(&status, Ok(r) if r.status == 200
            && serde_json::from_str::<serde_json::Value>(&r.body).is_ok_and(|v| v["instances"].is_u64()));
        ctx.books
            .verdicts
            .check(Inv::Http, ok, || format!("GET /api/status: {status:?}"));
        match scrape(&ctx).await {
            Ok(metrics) => {
                let decreased = metrics.decreased_since(&last);
                ctx.books
                    .verdicts
                    .check(Inv::Http, decreased.is_empty(), || {
                        format!("counters decreased: {}", decreased.join(", "))
                    });
                last = metrics;
            }
            Err(err) => ctx
                .books
                .verdicts
                .fail(Inv::Http, || format!("GET /metrics: {err}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_exposition_format() {
        let text = "# TYPE a_total counter\na_total 3\nb_total{reason=\"x\"} 2\nb_total{reason=\"y\"} 5\nbb 1\n";
        let metrics = Metrics::parse(text);
        assert_eq!(metrics.get("a_total"), 3.0);
        assert_eq!(metrics.get("b_total{reason=\"y\"}"), 5.0);
        assert_eq!(metrics.sum("b_total"), 7.0);
        assert_eq!(metrics.sum("b"), 0.0);
        let later = Metrics::parse("a_total 2\nb_total{reason=\"x\"} 2\n");
        assert_eq!(later.decreased_since(&metrics).len(), 2);
    }
}
