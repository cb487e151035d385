//! The web view in real browsers: headless Chromium (Debian's `chromium` and
//! `chromium-driver`, `scripts/lib.sh: krill_ensure_chromium`) and headless
//! Firefox ESR (Debian's `firefox-esr`, geckodriver from crates.io:
//! `krill_ensure_firefox`), each driven over WebDriver through the same walk
//! against a real gateway, RabbitMQ and worker. It signs in, follows a worker's running-tasks link and sees only running tasks, opens a task
//! blocked on a concurrency key and follows the link to its holder, watches a
//! live log grow, cancels a task with the button, and checks from the
//! attacker's side: a signed-out browser sees only the sign-in page, a POST
//! without the CSRF token is refused (from the page and with the stolen
//! cookie), the cookie does not authorise the JSON API's writes, and no secret,
//! sensitive value, token or session id appears in any page source it visited.
//! Screenshots go to `target/web-screenshots/` (the README's come from there:
//! Chromium's; Firefox's are named `firefox-…`).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder, Locator};
use krill_tests::gateway::{call, free_port, GatewayProc};
use krill_tests::trust::Keys;
use krill_tests::{unique_pool, Gates};
use reqwest::Method;
use serde_json::{json, Value};

const SECRET: &str = "web-secret-XJ7Q-value";
/// Built by the script from parts, so the literal is in no message.
const SENSITIVE: &str = "sens-QQ4Z-value";

/// The browsers the test drives: Debian's Chromium through chromedriver, and
/// Debian's Firefox ESR through geckodriver (built from crates.io: see
/// `scripts/lib.sh: krill_ensure_firefox`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Browser {
    Chromium,
    Firefox,
}

impl Browser {
    fn name(self) -> &'static str {
        match self {
            Browser::Chromium => "chromium",
            Browser::Firefox => "firefox",
        }
    }

    /// A screenshot's file name: Chromium's are the README's (no prefix).
    fn shot_name(self, name: &str) -> String {
        match self {
            Browser::Chromium => name.to_string(),
            Browser::Firefox => format!("firefox-{name}"),
        }
    }
}

/// The WebDriver server (chromedriver or geckodriver) on a free port; killed on drop.
struct Driver {
    child: Child,
    url: String,
    browser: Browser,
}

impl Driver {
    fn start(browser: Browser) -> Driver {
        let port = free_port();
        let mut cmd = match browser {
            Browser::Chromium => {
                let mut c = Command::new("chromedriver");
                c.arg(format!("--port={port}"));
                c
            }
            Browser::Firefox => {
                let mut c = Command::new("geckodriver");
                // Its BiDi port defaults to a fixed 9222: a free one, so two
                // runs side by side do not collide.
                c.args(["--port", &port.to_string(), "--websocket-port"])
                    .arg(free_port().to_string());
                c
            }
        };
        let (program, install) = match browser {
            Browser::Chromium => ("chromedriver", "krill_ensure_chromium"),
            Browser::Firefox => ("geckodriver", "krill_ensure_firefox"),
        };
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{program}: {e} (install it: `source scripts/lib.sh; {install}`)")
            });
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "{program} did not listen");
            std::thread::sleep(Duration::from_millis(50));
        }
        Driver {
            child,
            url: format!("http://127.0.0.1:{port}"),
            browser,
        }
    }

    async fn browser(&self) -> Client {
        let mut caps = serde_json::Map::new();
        match self.browser {
            Browser::Chromium => {
                caps.insert(
                    "goog:chromeOptions".into(),
                    json!({"args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                        "--disable-dev-shm-usage", "--window-size=1280,900"]}),
                );
            }
            Browser::Firefox => {
                caps.insert("browserName".into(), json!("firefox"));
                // No connection out of the machine (there is no network to
                // reach): no updates, telemetry, safe-browsing or portal checks.
                caps.insert(
                    "moz:firefoxOptions".into(),
                    json!({"binary": firefox_binary(),
                    "args": ["-headless", "--width=1280", "--height=900"],
                    "prefs": {
                        "app.update.disabledForTesting": true,
                        "browser.safebrowsing.malware.enabled": false,
                        "browser.safebrowsing.phishing.enabled": false,
                        "datareporting.policy.dataSubmissionEnabled": false,
                        "toolkit.telemetry.enabled": false,
                        "network.captive-portal-service.enabled": false,
                        "network.connectivity-service.enabled": false,
                        "extensions.update.enabled": false,
                        "browser.shell.checkDefaultBrowser": false
                    }}),
                );
            }
        }
        ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(caps)
            .connect(&self.url)
            .await
            .unwrap_or_else(|e| panic!("a {} session: {e}", self.browser.name()))
    }
}

/// Debian's `firefox-esr` (or a `firefox` on PATH).
fn firefox_binary() -> String {
    for name in ["firefox-esr", "firefox"] {
        if let Some(p) = std::env::var_os("PATH").and_then(|path| {
            std::env::split_paths(&path)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        }) {
            return p.display().to_string();
        }
    }
    panic!("firefox-esr is not installed (`source scripts/lib.sh; krill_ensure_firefox`)")
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Every page source the browser saw, to search for what must not be there.
struct Seen(Vec<(String, String)>);

impl Seen {
    async fn take(&mut self, c: &Client) -> String {
        let url = c.current_url().await.expect("url").to_string();
        let src = c.source().await.expect("source");
        self.0.push((url, src.clone()));
        src
    }
}

/// Loads `url` again until its source satisfies `ok` (30 s at most).
async fn until(
    c: &Client,
    seen: &mut Seen,
    url: &str,
    what: &str,
    ok: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        c.goto(url).await.expect("goto");
        let src = seen.take(c).await;
        if ok(&src) {
            return src;
        }
        assert!(Instant::now() < deadline, "{what}: never on {url}:\n{src}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Waits (10 s at most) until the browser is on `path` (a click that submits
/// a form returns before the navigation ends).
async fn wait_path(c: &Client, path: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let url = c.current_url().await.expect("url");
        if url.path() == path {
            return;
        }
        assert!(Instant::now() < deadline, "never on {path}: {url}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Clicks `css` and waits (10 s at most) until a new document has loaded (a
/// click that submits a form or follows a link returns before that).
async fn click_through(c: &Client, css: &str) {
    c.execute("window.__krillOld = true; return null;", vec![])
        .await
        .expect("mark");
    c.find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("{css}: {e}"))
        .click()
        .await
        .expect("click");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let fresh = c
            .execute(
                "return window.__krillOld === undefined && document.readyState === 'complete';",
                vec![],
            )
            .await
            .unwrap_or(Value::Bool(false));
        if fresh == Value::Bool(true) {
            return;
        }
        assert!(Instant::now() < deadline, "clicking {css} loaded no page");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn screenshots() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("web-screenshots");
    std::fs::create_dir_all(&dir).expect("screenshot dir");
    dir
}

async fn shot(c: &Client, b: Browser, name: &str) {
    let png = c.screenshot().await.expect("screenshot");
    std::fs::write(
        screenshots().join(format!("{}.png", b.shot_name(name))),
        png,
    )
    .expect("write screenshot");
}

async fn submit(gw: &GatewayProc, pool: &str, token: &str, body: Value) -> String {
    let (st, _, v) = call(
        Method::POST,
        &format!("{}/v1/tasks?pool={pool}", gw.url),
        Some(token),
        &[],
        Some(body.to_string().into_bytes()),
    )
    .await;
    assert_eq!(st, 202, "{v}");
    v["id"].as_str().expect("id").to_string()
}

async fn state_of(gw: &GatewayProc, token: &str, id: &str) -> Value {
    call(
        Method::GET,
        &format!("{}/v1/tasks/{id}", gw.url),
        Some(token),
        &[],
        None,
    )
    .await
    .2
}

async fn wait_state(gw: &GatewayProc, token: &str, id: &str, want: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let t = state_of(gw, token, id).await;
        if t["state"] == want && (want != "finished" || !t["result"].is_null()) {
            return t;
        }
        assert!(
            Instant::now() < deadline,
            "{id} never {want}: {t}\n{}",
            gw.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_view_in_chromium() {
    the_web_view_in(Browser::Chromium).await;
}

/// The same walk in Firefox (#17: "works in a current Chromium and Firefox").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_view_in_firefox() {
    the_web_view_in(Browser::Firefox).await;
}

async fn the_web_view_in(browser: Browser) {
    let started = Instant::now();
    let gates = Gates::new();
    let pool = unique_pool("web");
    let gw = GatewayProc::new(&pool, None);
    let keys = Keys::new("", &[format!("{} control", gw.key.public_line())]);
    let worker = keys
        .worker(&pool)
        .env("KRILL_CONCURRENCY", "4")
        .gates(&gates)
        .start()
        .await;
    let mut gw = gw.env("KRILL_POOL_PUBLIC_KEY", &keys.pool.public().to_b64());
    let ops = gw.token("ops", "admin");
    gw.start().await;

    // A finished task with a secret and a sensitive output.
    let done = submit(&gw, &pool, &ops, json!({
        "script": "echo \"key is $API_KEY\"; echo \"tok=sens-$(echo QQ4Z)-value\" >> \"$KRILL_SENSITIVE_OUTPUT\"; echo plain=visible >> \"$KRILL_OUTPUT\"",
        "sandbox": "process", "secrets": {"API_KEY": SECRET}})).await;
    wait_state(&gw, &ops, &done, "finished").await;
    // The holder of key prod-db, and a task blocked behind it.
    let holder = submit(
        &gw,
        &pool,
        &ops,
        json!({"script": gates.wait("holder"), "sandbox": "process", "concurrency_key": "prod-db"}),
    )
    .await;
    wait_state(&gw, &ops, &holder, "started").await;
    let blocked = submit(
        &gw,
        &pool,
        &ops,
        json!({"script": "echo unblocked", "sandbox": "process", "concurrency_key": "prod-db"}),
    )
    .await;
    wait_state(&gw, &ops, &blocked, "blocked").await;
    // A task whose log grows until it is cancelled.
    let talker = submit(&gw, &pool, &ops, json!({"script": "i=0; while [ $i -lt 600 ]; do i=$((i+1)); echo line-$i; sleep 0.2; done", "sandbox": "process"})).await;
    wait_state(&gw, &ops, &talker, "started").await;
    eprintln!("set-up: {:?}", started.elapsed());

    let driver = Driver::start(browser);
    let c = driver.browser().await;
    let mut seen = Seen(Vec::new());
    let base = gw.url.clone();

    // Signed out: every page is the sign-in page.
    for path in ["/", "/workers", &format!("/tasks/{holder}"), "/pools"] {
        c.goto(&format!("{base}{path}")).await.expect("goto");
        assert!(
            c.current_url().await.expect("url").path() == "/signin",
            "{path} did not send to sign-in"
        );
        let src = seen.take(&c).await;
        assert!(
            src.contains("Sign in to Krill") && !src.contains(&holder),
            "{src}"
        );
    }
    // A wrong token is refused; the right one signs in.
    c.find(Locator::Id("token"))
        .await
        .expect("token field")
        .send_keys("krill_wrong")
        .await
        .expect("type");
    click_through(&c, "button[type=submit]").await;
    assert!(seen.take(&c).await.contains("unknown token"));
    c.find(Locator::Id("token"))
        .await
        .expect("token field")
        .send_keys(&ops)
        .await
        .expect("type");
    click_through(&c, "button[type=submit]").await;
    wait_path(&c, "/workers").await;

    // Workers: the worker runs two tasks; its link lists exactly those.
    let row = format!("tr[data-worker=\"{}\"]", worker.id);
    until(
        &c,
        &mut seen,
        &format!("{base}/workers"),
        "2 running",
        |s| s.contains(&worker.id) && s.contains("2 running"),
    )
    .await;
    assert!(
        seen.0
            .last()
            .is_some_and(|(_, s)| s.contains("href=\"/v1/workers\"")),
        "JSON twin link"
    );
    shot(&c, browser, "workers").await;
    click_through(&c, &format!("{row} a.running-link")).await;
    let url = c.current_url().await.expect("url");
    assert_eq!(url.path(), "/tasks");
    assert!(
        url.query().is_some_and(|q| q.contains("state=running")),
        "{url}"
    );
    let src = seen.take(&c).await;
    let rows = c
        .find_all(Locator::Css("tr[data-task]"))
        .await
        .expect("rows");
    let mut ids = Vec::new();
    for r in rows {
        assert_eq!(
            r.attr("data-state").await.expect("attr").as_deref(),
            Some("started"),
            "{src}"
        );
        ids.push(r.attr("data-task").await.expect("attr").expect("id"));
    }
    ids.sort();
    let mut want = vec![holder.clone(), talker.clone()];
    want.sort();
    assert_eq!(
        ids, want,
        "the running-tasks link lists exactly the running tasks"
    );

    // The blocked task says why, and links its holder.
    c.goto(&format!("{base}/tasks/{blocked}"))
        .await
        .expect("goto");
    let src = seen.take(&c).await;
    let why = c
        .find(Locator::Css("p.why"))
        .await
        .expect("why")
        .text()
        .await
        .expect("text");
    assert!(
        why.starts_with(&format!(
            "Waiting for task {holder} (key prod-db, running on worker {}",
            worker.id
        )) && why.ends_with("1st in line."),
        "{why}"
    );
    assert!(
        !why.contains(&blocked),
        "the task is not its own blocker: {why}"
    );
    shot(&c, browser, "task-blocked").await;
    click_through(&c, "p.why a.blocker").await;
    wait_path(&c, &format!("/tasks/{holder}")).await;
    let h1 = c
        .find(Locator::Css("h1"))
        .await
        .expect("h1")
        .text()
        .await
        .expect("text");
    assert!(h1.contains(&holder), "{h1}");
    assert!(
        src.contains(&format!("href=\"/v1/tasks/{blocked}\"")),
        "JSON twin link"
    );

    // The talker's live log grows.
    c.goto(&format!("{base}/tasks/{talker}"))
        .await
        .expect("goto");
    let lines = |t: &str| t.lines().filter(|l| l.starts_with("line-")).count();
    let mut first = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let n = lines(
            &c.find(Locator::Id("log"))
                .await
                .expect("log")
                .text()
                .await
                .expect("text"),
        );
        if first == 0 && n > 0 {
            first = n;
        } else if first > 0 && n >= first + 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the live log did not grow ({first} → {n})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    shot(&c, browser, "task-live").await;
    seen.take(&c).await;

    // Attacker's side: a POST without the CSRF token, from the signed-in page itself…
    let status = c
        .execute(
            &format!("return fetch('/tasks/{blocked}/cancel', {{method: 'POST', headers: {{'Content-Type': 'application/x-www-form-urlencoded'}}, body: 'x=1'}}).then(r => r.status)"),
            vec![],
        )
        .await
        .expect("fetch");
    assert_eq!(status, json!(403), "a POST without the CSRF token");
    // … and with the stolen cookie but a guessed token; the cookie does not
    // authorise the JSON API's writes either, only its reads.
    let cookie = c
        .get_named_cookie("krill_session")
        .await
        .expect("session cookie");
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(format!("{:?}", cookie.same_site()), "Some(Strict)");
    assert_eq!(cookie.path(), Some("/"));
    let jar = format!("krill_session={}", cookie.value());
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("http");
    let r = http
        .post(format!("{base}/tasks/{blocked}/cancel"))
        .header("cookie", &jar)
        .form(&[(
            "csrf",
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        )])
        .send()
        .await
        .expect("post");
    assert_eq!(r.status().as_u16(), 403);
    let r = http
        .delete(format!("{base}/v1/tasks/{blocked}"))
        .header("cookie", &jar)
        .send()
        .await
        .expect("delete");
    assert_eq!(
        r.status().as_u16(),
        401,
        "the cookie must not authorise API writes"
    );
    let r = http
        .get(format!("{base}/v1/tasks/{blocked}"))
        .header("cookie", &jar)
        .send()
        .await
        .expect("get");
    assert_eq!(
        r.status().as_u16(),
        200,
        "the JSON twin reads with the session"
    );
    assert_eq!(
        state_of(&gw, &ops, &blocked).await["state"],
        "blocked",
        "nothing was cancelled"
    );
    assert!(
        !krill_tests::gateway::contains(&gw.sqlite_bytes(), cookie.value()),
        "the session id is stored only hashed"
    );

    // Cancel the talker with the button.
    c.goto(&format!("{base}/tasks/{talker}"))
        .await
        .expect("goto");
    click_through(&c, "form[action$=\"/cancel\"] button").await;
    let t = wait_state(&gw, &ops, &talker, "finished").await;
    assert_eq!(t["status"], "cancelled", "{t}");
    until(
        &c,
        &mut seen,
        &format!("{base}/tasks/{talker}"),
        "cancelled",
        |s| s.contains("cancelled"),
    )
    .await;

    // The finished task: masked output, sensitive output as ***, plain one shown.
    let src = until(
        &c,
        &mut seen,
        &format!("{base}/tasks/{done}"),
        "output",
        |s| s.contains("key is ***"),
    )
    .await;
    assert!(src.contains("visible"), "{src}");
    shot(&c, browser, "task-done").await;
    // The task list, filtered, and the pools page with its chart.
    until(
        &c,
        &mut seen,
        &format!("{base}/tasks?pool={pool}&state=finished"),
        "finished list",
        |s| s.contains(&done),
    )
    .await;
    let src = until(&c, &mut seen, &format!("{base}/pools"), "pool", |s| {
        s.contains(&pool) && s.contains("<svg")
    })
    .await;
    assert!(
        src.contains("queue depth") && src.contains("Oldest waiting task"),
        "{src}"
    );
    shot(&c, browser, "pools").await;
    until(
        &c,
        &mut seen,
        &format!("{base}/dead"),
        "dead letters",
        |s| s.contains("Dead letters"),
    )
    .await;

    // Drain and resume the worker with the buttons (its heartbeat says so).
    c.goto(&format!("{base}/workers")).await.expect("goto");
    click_through(&c, &format!("{row} form[action$=\"/drain\"] button")).await;
    until(&c, &mut seen, &format!("{base}/workers"), "draining", |s| {
        s.contains("state draining") && s.contains("/resume")
    })
    .await;
    click_through(&c, &format!("{row} form[action$=\"/resume\"] button")).await;
    until(
        &c,
        &mut seen,
        &format!("{base}/workers"),
        "live again",
        |s| s.contains("state live") && s.contains("/drain"),
    )
    .await;

    // Sign out: back to signed-out.
    c.goto(&format!("{base}/workers")).await.expect("goto");
    click_through(&c, "form[action=\"/signout\"] button").await;
    wait_path(&c, "/signin").await;
    c.goto(&format!("{base}/tasks/{done}")).await.expect("goto");
    assert_eq!(c.current_url().await.expect("url").path(), "/signin");
    seen.take(&c).await;
    let r = http
        .get(format!("{base}/workers"))
        .header("cookie", &jar)
        .send()
        .await
        .expect("get");
    assert_eq!(
        r.status().as_u16(),
        303,
        "the old cookie is dead after sign-out"
    );

    // No secret, sensitive value, token or session id in any page.
    assert!(seen.0.len() >= 12, "{} pages", seen.0.len());
    for (url, src) in &seen.0 {
        for bad in [SECRET, SENSITIVE, ops.as_str(), cookie.value()] {
            assert!(!src.contains(bad), "{url} shows a secret value `{bad}`");
        }
    }
    let _ = c.close().await;
    gates.open("holder");
    wait_state(&gw, &ops, &blocked, "finished").await;
    eprintln!(
        "web test in {}: {:?}, {} pages",
        browser.name(),
        started.elapsed(),
        seen.0.len()
    );
}

/// Measures (never asserts) how fast the pages load with 1,000 tasks in the
/// history: server time for the whole page over HTTP, p50 and max of 20 loads
/// each, printed for the README. No worker is needed: the rows are written
/// straight into the gateway's SQLite file before it starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_load_with_1000_tasks_in_the_history() {
    let pool = unique_pool("web1k");
    let mut gw = GatewayProc::new(&pool, None);
    let ops = gw.token("ops", "admin");
    let store = gateway::store::Store::open(&gw.db_url)
        .await
        .expect("store");
    let now = gateway::store::now_ms();
    let result = json!({"version": 1, "id": "x", "status": "succeeded", "exit_code": 0,
        "stdout": "line\n".repeat(200), "stderr": "", "outputs": [{"name": "answer", "value": "42"}],
        "attempt": 1, "timings": {}, "usage": {}});
    let mut ids = Vec::new();
    for i in 0..1000i64 {
        let id = krill_tests::new_id();
        let finished = i % 10 != 0;
        store
            .put(&gateway::store::TaskRow {
                id: id.clone(),
                pool: pool.clone(),
                state: if finished { "finished" } else { "started" }.into(),
                status: finished.then(|| "succeeded".into()),
                caller: Some("ops".into()),
                submitter: Some("gateway".into()),
                worker: Some(format!("w-{}", i % 4)),
                sandbox: Some("process".into()),
                attempt: Some(1),
                exit_code: finished.then_some(0),
                spec: Some(json!({"script": format!("echo {i}")}).to_string()),
                result: finished.then(|| result.to_string()),
                submitted_at: Some(now - (1000 - i) * 1000),
                started_at: Some(now - (1000 - i) * 1000 + 200),
                finished_at: finished.then_some(now - (1000 - i) * 1000 + 900),
                updated_at: now - (1000 - i) * 1000 + 900,
                ..Default::default()
            })
            .await
            .expect("put");
        ids.push(id);
    }
    drop(store);
    gw.start().await;
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("http");
    let r = http
        .post(format!("{}/signin", gw.url))
        .form(&[("token", ops.as_str())])
        .send()
        .await
        .expect("sign in");
    let cookie = r
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .expect("session cookie")
        .to_string();
    let mut lines = Vec::new();
    for path in [
        "/tasks".to_string(),
        format!("/tasks?pool={pool}&state=finished"),
        "/tasks?worker=w-1&state=running".to_string(),
        format!("/tasks/{}", ids[500]),
        "/pools".to_string(),
        "/workers".to_string(),
    ] {
        let mut ms = Vec::new();
        let mut bytes = 0;
        for _ in 0..20 {
            let t = Instant::now();
            let r = http
                .get(format!("{}{path}", gw.url))
                .header("cookie", &cookie)
                .send()
                .await
                .expect("get");
            assert_eq!(r.status().as_u16(), 200, "{path}");
            bytes = r.bytes().await.expect("body").len();
            ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        ms.sort_by(f64::total_cmp);
        lines.push(format!(
            "| `{}` | {:.1} ms | {:.1} ms | {} KiB |",
            path.replace(&pool, "P"),
            ms[ms.len() / 2],
            ms[ms.len() - 1],
            bytes / 1024
        ));
    }
    eprintln!("page loads with 1,000 tasks in the history (20 each):\n| page | p50 | max | size |\n|---|---|---|---|");
    for l in lines {
        eprintln!("{l}");
    }
}
