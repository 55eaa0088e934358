//! The status page in a real browser: headless Chromium (Debian's `chromium`) shows the names
//! of connected instances, escaped, arriving by live update only, and leaves screenshots in
//! `target/`.
//!
//! Without `chromium` on PATH the test prints `SKIPPED` and passes, so `cargo test` works with
//! a bare Rust toolchain; `SOVA_REQUIRE_BROWSER=1` (set by `.ci/run`, after
//! `scripts/install-test-deps.sh`) turns that into a failure.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::time::{timeout, Instant};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::{connect_async, MaybeTlsStream, WebSocketStream};

use crate::support::TestServer;

/// Names that are markup if anything renders them as HTML.
const ALICE: &str = "alice <b>&";
const BOB: &str = "bob \"quoted\"";
const CAROL: &str = "carol <img src=x>";

/// How the browser serializes those names as text (what `--dump-dom` must show).
const ALICE_CELL: &str = r#"<td class="instance-name">alice &lt;b&gt;&amp;</td>"#;
const BOB_CELL: &str = r#"<td class="instance-name">bob "quoted"</td>"#;

/// Longest the browser may take for anything (start, load, a live update).
const BROWSER_WAIT: Duration = Duration::from_secs(20);

/// Flags for every run: no sandbox (CI runs as root), no network beyond the relay, a
/// throwaway profile (added per run).
const FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];

#[tokio::test]
async fn status_page_shows_instance_names_by_live_update() {
    let Some(chromium) = chromium_or_skip() else {
        return;
    };
    let relay = TestServer::start().await;
    let url = format!("http://{}/", relay.addr);
    let _alice = relay.client(ALICE).await;
    let _bob = relay.client(BOB).await;

    // The served page never carries names: whatever the browser shows came from the API.
    let served = http_get(relay.addr, "/").await;
    assert!(served.starts_with("HTTP/1.1 200"), "GET /: {served}");
    for name in ["alice", "bob", "carol"] {
        assert!(!served.contains(name), "served HTML contains {name:?}");
    }

    // What the DOM holds once the page has polled: the names as text, never as elements.
    let dom = dump_dom_until(&chromium, &url, |dom| {
        dom.matches("data-instance=").count() >= 2
    })
    .await;
    assert_eq!(dom.matches("data-instance=").count(), 2, "{dom}");
    assert!(!dom.contains("<b>"), "a name became markup: {dom}");
    for cell in [ALICE_CELL, BOB_CELL] {
        assert!(dom.contains(cell), "no {cell} in the DOM: {dom}");
    }

    // A page already open follows instances arriving and leaving, without a reload.
    let mut browser = Browser::launch(&chromium).await;
    let mut page = browser.open(&url).await;
    page.wait_for_names(&[ALICE, BOB]).await;
    page.eval("window.sovaSameDocument = true").await;
    let carol = relay.client(CAROL).await;
    page.wait_for_names(&[ALICE, BOB, CAROL]).await;
    drop(carol);
    page.wait_for_names(&[ALICE, BOB]).await;
    assert_eq!(
        page.eval("window.sovaSameDocument === true").await,
        json!(true)
    );
    browser.close().await;

    // Screenshots for a human to look at: a desktop window and a phone.
    let target = target_dir();
    let (wide, narrow) = tokio::join!(
        screenshot(&chromium, &url, target.join("status-page.png"), (1200, 800)),
        screenshot(
            &chromium,
            &url,
            target.join("status-page-narrow.png"),
            (390, 844)
        ),
    );
    eprintln!("screenshots: {} {}", wide.display(), narrow.display());
}

/// `chromium` on PATH; `None` (after saying so loudly) when it is missing and not required.
fn chromium_or_skip() -> Option<PathBuf> {
    let found = std::env::var_os("PATH").and_then(|path| {
        std::env::split_paths(&path)
            .map(|dir| dir.join("chromium"))
            .find(|candidate| candidate.is_file())
    });
    if found.is_none() {
        let hint = "chromium not installed; run scripts/install-test-deps.sh";
        assert!(
            std::env::var("SOVA_REQUIRE_BROWSER").as_deref() != Ok("1"),
            "browser test: {hint} (SOVA_REQUIRE_BROWSER=1 is set)"
        );
        // Straight to stderr: the test harness captures `eprintln!` of passing tests.
        let _ = writeln!(
            std::io::stderr(),
            "\n*** SKIPPED: browser test: {hint} ***\n"
        );
    }
    found
}

/// A fresh Chromium user-data-dir, removed on drop.
struct Profile(PathBuf);

impl Profile {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(format!("sova-chromium-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir(&dir).unwrap();
        Profile(dir)
    }

    /// `chromium` with the common flags and this profile; killed if dropped while running.
    fn command(&self, chromium: &Path) -> Command {
        let mut command = Command::new(chromium);
        command
            .args(FLAGS)
            .arg(format!("--user-data-dir={}", self.0.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }
}

impl Drop for Profile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs one Chromium to completion (killed after `BROWSER_WAIT`).
async fn run(chromium: &Path, profile: &Profile, args: &[String]) -> Output {
    let mut command = profile.command(chromium);
    command.args(args);
    match timeout(BROWSER_WAIT, command.output()).await {
        Ok(output) => output.unwrap(),
        Err(_) => panic!("chromium {args:?} still running after {BROWSER_WAIT:?}"),
    }
}

/// The DOM after the page has run for a while of virtual time; retried with a longer budget
/// until `done` holds (virtual time waits for the fetches, so one run suffices in practice).
async fn dump_dom_until(chromium: &Path, url: &str, done: impl Fn(&str) -> bool) -> String {
    let deadline = Instant::now() + BROWSER_WAIT;
    let mut budget_ms = 2000;
    loop {
        let profile = Profile::new();
        let args = [
            format!("--virtual-time-budget={budget_ms}"),
            "--dump-dom".to_owned(),
            url.to_owned(),
        ];
        let output = run(chromium, &profile, &args).await;
        let dom = String::from_utf8_lossy(&output.stdout).into_owned();
        if done(&dom) {
            return dom;
        }
        assert!(
            Instant::now() < deadline,
            "the names never showed in the DOM ({}); last DOM:\n{dom}\nstderr:\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        budget_ms *= 2;
    }
}

/// Saves a screenshot of the page at `size` to `path`, checks it is a real PNG of that size.
async fn screenshot(chromium: &Path, url: &str, path: PathBuf, size: (u32, u32)) -> PathBuf {
    let _ = std::fs::remove_file(&path);
    let profile = Profile::new();
    let args = [
        "--virtual-time-budget=3000".to_owned(),
        format!("--window-size={},{}", size.0, size.1),
        format!("--screenshot={}", path.display()),
        url.to_owned(),
    ];
    let output = run(chromium, &profile, &args).await;
    let png = std::fs::read(&path).unwrap_or_else(|err| {
        panic!(
            "no screenshot at {} ({err}; {}); stderr:\n{}",
            path.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )
    });
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    let width = u32::from_be_bytes(png[16..20].try_into().unwrap());
    let height = u32::from_be_bytes(png[20..24].try_into().unwrap());
    assert_eq!((width, height), size, "screenshot size");
    assert!(png.len() > 10_000, "screenshot is only {} bytes", png.len());
    path
}

/// The workspace's `target/` (or `CARGO_TARGET_DIR`).
fn target_dir() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let target = match std::env::var_os("CARGO_TARGET_DIR") {
        // Cargo reads a relative CARGO_TARGET_DIR from where it runs: the workspace root,
        // normally. An absolute one replaces the base.
        Some(dir) => workspace.join(dir),
        None => workspace.join("target"),
    };
    std::fs::create_dir_all(&target).unwrap();
    target.canonicalize().unwrap()
}

/// A plain HTTP/1.1 GET; the whole response, head and body.
async fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    timeout(BROWSER_WAIT, stream.read_to_end(&mut response))
        .await
        .expect("response in time")
        .unwrap();
    String::from_utf8(response).unwrap()
}

/// A Chromium driven over the DevTools protocol (a WebSocket to its debugging port).
struct Browser {
    child: Child,
    devtools: DevTools,
    _profile: Profile,
}

impl Browser {
    async fn launch(chromium: &Path) -> Self {
        let profile = Profile::new();
        let mut child = profile
            .command(chromium)
            .arg("--remote-debugging-port=0")
            .arg("about:blank")
            .spawn()
            .unwrap();
        // Chromium announces its endpoint on stderr, then keeps logging there: drain it.
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let endpoint = timeout(BROWSER_WAIT, async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if let Some(at) = line.find("ws://") {
                    return line[at..].trim().to_owned();
                }
            }
            panic!("chromium exited without a DevTools endpoint");
        })
        .await
        .expect("DevTools endpoint in time");
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let (ws, _) = connect_async(endpoint.as_str()).await.unwrap();
        Browser {
            child,
            devtools: DevTools {
                ws,
                next_id: 0,
                events: Vec::new(),
            },
            _profile: profile,
        }
    }

    /// A new tab showing `url`, once it has loaded.
    async fn open(&mut self, url: &str) -> Page<'_> {
        let target = self
            .devtools
            .call(None, "Target.createTarget", json!({ "url": "about:blank" }))
            .await;
        let attached = self
            .devtools
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": target["targetId"], "flatten": true }),
            )
            .await;
        let session = attached["sessionId"].as_str().unwrap().to_owned();
        let devtools = &mut self.devtools;
        devtools
            .call(Some(&session), "Page.enable", json!({}))
            .await;
        devtools
            .call(Some(&session), "Page.navigate", json!({ "url": url }))
            .await;
        devtools.event(&session, "Page.loadEventFired").await;
        Page { devtools, session }
    }

    /// Closes the browser and waits for it to exit (it is killed if this never happens).
    async fn close(mut self) {
        self.devtools.call(None, "Browser.close", json!({})).await;
        timeout(BROWSER_WAIT, self.child.wait())
            .await
            .expect("chromium exited in time")
            .unwrap();
    }
}

/// The DevTools connection: numbered calls, events kept until asked for.
struct DevTools {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    next_id: u64,
    events: Vec<Value>,
}

impl DevTools {
    async fn call(&mut self, session: Option<&str>, method: &str, params: Value) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut request = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            request["sessionId"] = json!(session);
        }
        self.ws
            .send(WsMessage::text(request.to_string()))
            .await
            .unwrap();
        loop {
            let message = self.next().await;
            if message["id"] == json!(id) {
                assert!(message["error"].is_null(), "{method}: {message}");
                return message["result"].clone();
            }
            if message.get("method").is_some() {
                self.events.push(message);
            }
        }
    }

    /// Waits for the event `method` from `session`.
    async fn event(&mut self, session: &str, method: &str) -> Value {
        let matches = |m: &Value| m["method"] == json!(method) && m["sessionId"] == json!(session);
        if let Some(at) = self.events.iter().position(matches) {
            return self.events.remove(at);
        }
        loop {
            let message = self.next().await;
            if matches(&message) {
                return message;
            }
        }
    }

    async fn next(&mut self) -> Value {
        loop {
            let message = timeout(BROWSER_WAIT, self.ws.next())
                .await
                .expect("DevTools message in time")
                .expect("DevTools connection open")
                .unwrap();
            if let WsMessage::Text(text) = message {
                return serde_json::from_str(&text).unwrap();
            }
        }
    }
}

/// One tab of a [`Browser`].
struct Page<'a> {
    devtools: &'a mut DevTools,
    session: String,
}

impl Page<'_> {
    /// Evaluates `expression` in the page (awaiting a promise) and returns its value.
    async fn eval(&mut self, expression: &str) -> Value {
        let params = json!({
            "expression": expression,
            "returnByValue": true,
            "awaitPromise": true,
        });
        let result = self
            .devtools
            .call(Some(&self.session), "Runtime.evaluate", params)
            .await;
        assert!(
            result["exceptionDetails"].is_null(),
            "{expression}: {result}"
        );
        result["result"]["value"].clone()
    }

    /// Waits until the instance rows show exactly `names` (in any order), as text: the page
    /// resolves a promise from a MutationObserver, so this waits on the DOM, not on a clock.
    async fn wait_for_names(&mut self, names: &[&str]) {
        let mut names = names.to_vec();
        names.sort_unstable();
        let expected = serde_json::to_string(&names).unwrap();
        let script = format!(
            r#"new Promise((resolve) => {{
                const expected = JSON.stringify({expected});
                const check = () => {{
                    const cells = [...document.querySelectorAll("tr[data-instance] td.instance-name")];
                    const names = JSON.stringify(cells.map((cell) => cell.textContent).sort());
                    const markup = cells.some((cell) => cell.children.length > 0);
                    if (names === expected || markup) {{
                        resolve({{ names, markup }});
                        return true;
                    }}
                    return false;
                }};
                if (check()) return;
                const observer = new MutationObserver(() => check() && observer.disconnect());
                observer.observe(document, {{ subtree: true, childList: true, characterData: true }});
            }})"#
        );
        let seen = timeout(BROWSER_WAIT, self.eval(&script))
            .await
            .unwrap_or_else(|_| panic!("the page never showed exactly {expected}"));
        assert_eq!(seen["markup"], json!(false), "a name became markup: {seen}");
        assert_eq!(seen["names"], json!(expected));
    }
}
