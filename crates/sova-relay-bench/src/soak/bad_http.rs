//! Bad input over HTTP on the relay's port, and misuse of the admin API: unknown paths,
//! wrong methods, oversized and overlong heads, a garbled request line, a request trickled
//! too slowly, kicks without or with a wrong token, of a bad or unknown id. Each must get
//! its documented status (or be cut off in time), and the relay must carry on.

use std::time::{Duration, Instant};

use uuid::Uuid;

use super::ctx::Ctx;
use super::http::{self, Response};
use super::ledger::add;

/// One bad request, chosen at random; `Err` says what the relay did instead.
pub async fn run(ctx: &Ctx, rng: &mut fastrand::Rng) -> Result<(), String> {
    add(&ctx.books.tally.bad_inputs, 1);
    let token = format!("Bearer {}", ctx.settings.admin_token);
    let wrong = format!("Bearer not-{}", ctx.settings.admin_token);
    let unknown = format!(
        "/api/instances/{}",
        Uuid::from_u64_pair(rng.u64(..), rng.u64(..))
    );
    let huge = "x".repeat(20 * 1024);
    let many: Vec<(String, String)> = (0..100).map(|i| (format!("X-H{i}"), "v".into())).collect();
    let many: Vec<(&str, &str)> = many.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let (what, want, response) = match rng.u8(0..10) {
        0 => (
            "GET /nope",
            404,
            http::request(ctx, "GET", "/nope", &[]).await,
        ),
        1 => (
            "POST /healthz",
            405,
            http::request(ctx, "POST", "/healthz", &[]).await,
        ),
        2 => {
            let response = http::request(ctx, "GET", "/healthz", &[("X-Huge", &huge)]).await;
            ("a 20 KiB header", 431, response)
        }
        3 => (
            "100 headers",
            431,
            http::request(ctx, "GET", "/healthz", &many).await,
        ),
        4 => ("a garbled request line", 400, garbled(ctx).await),
        5 => (
            "a kick without a token",
            401,
            http::request(ctx, "DELETE", &unknown, &[]).await,
        ),
        6 => {
            let response =
                http::request(ctx, "DELETE", &unknown, &[("Authorization", &wrong)]).await;
            ("a kick with a wrong token", 401, response)
        }
        7 => {
            let response =
                http::request(ctx, "DELETE", &unknown, &[("Authorization", &token)]).await;
            ("a kick of an unknown id", 404, response)
        }
        8 => {
            let path = "/api/instances/not-an-id";
            let response = http::request(ctx, "DELETE", path, &[("Authorization", &token)]).await;
            ("a kick of a bad id", 400, response)
        }
        _ => return trickled(ctx).await,
    };
    match response {
        Ok(Response { status, .. }) if status == want => Ok(()),
        other => Err(format!("{what}: expected {want}, got {other:?}")),
    }
}

async fn garbled(ctx: &Ctx) -> std::io::Result<Response> {
    add(&ctx.books.tally.http_requests, 1);
    http::raw(ctx.addr, b"GET \x01\x02 HTTP/1.1\r\nHost: relay\r\n\r\n").await
}

/// Half a request head, then silence: cut off after `--handshake-timeout`.
async fn trickled(ctx: &Ctx) -> Result<(), String> {
    add(&ctx.books.tally.http_requests, 1);
    let started = Instant::now();
    let response = http::raw(ctx.addr, b"GET /healthz HTTP/1.1\r\nHost: relay\r\n").await;
    let took = started.elapsed();
    let limit = ctx.settings.handshake_timeout + Duration::from_secs(3);
    match response {
        Ok(_) if took <= limit => Ok(()),
        other => Err(format!("a trickled request: {other:?} after {took:?}")),
    }
}
