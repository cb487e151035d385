//! Helpers for the gateway tests: a `krill-gateway` process on a free port with
//! a database of its own (a SQLite file, or a PostgreSQL schema), its tokens,
//! and a small JSON client.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use broker::trust::Identity;

use crate::{amqp_url, bin};

/// A free TCP port on 127.0.0.1 (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A gateway process; killed on drop (its data dir stays for the test to read).
#[derive(Debug)]
pub struct GatewayProc {
    pub dir: PathBuf,
    pub url: String,
    pub db_url: String,
    pub key: Identity,
    pub key_path: PathBuf,
    pub queue: String,
    pub args: Vec<(String, String)>,
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl GatewayProc {
    /// A gateway (not started) for `pool` with a SQLite file in a temp dir,
    /// or the database `db_url` when given.
    pub fn new(pool: &str, db_url: Option<String>) -> GatewayProc {
        let dir = std::env::temp_dir().join(format!(
            "krill-gw-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        ));
        std::fs::create_dir_all(&dir).expect("gateway dir");
        let key = Identity::generate("gateway").expect("key");
        let key_path = dir.join("gateway.key");
        key.save(&key_path).expect("save key");
        let db_url =
            db_url.unwrap_or_else(|| format!("sqlite://{}", dir.join("gateway.db").display()));
        GatewayProc {
            url: String::new(),
            db_url,
            key,
            key_path,
            queue: format!("krill.gateway.{pool}"),
            args: vec![("KRILL_GATEWAY_WATCH".into(), pool.to_string())],
            child: None,
            log: dir.join("gateway.log"),
            dir,
        }
    }

    /// Sets an environment variable of the process.
    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.args.push((k.to_string(), v.to_string()));
        self
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(bin("krill-gateway"));
        cmd.env("KRILL_AMQP_URL", amqp_url())
            .env("KRILL_GATEWAY_DATA_DIR", &self.dir)
            .env("KRILL_GATEWAY_DATABASE_URL", &self.db_url)
            .env("KRILL_GATEWAY_KEY", &self.key_path)
            .env("KRILL_GATEWAY_QUEUE", &self.queue)
            .env("RUST_LOG", "info,lapin=warn,sqlx=warn")
            .envs(self.args.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null());
        cmd
    }

    /// `krill-gateway tokens add NAME --rights RIGHTS`: the printed token.
    pub fn token(&self, name: &str, rights: &str) -> String {
        let out = self
            .command()
            .args(["tokens", "add", name, "--rights", rights])
            .output()
            .expect("krill-gateway tokens add");
        assert!(
            out.status.success(),
            "tokens add failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .expect("utf8")
            .trim()
            .to_string()
    }

    /// `krill-gateway tokens ARGS…` on this gateway's database.
    pub fn tokens(&self, args: &[&str]) -> std::process::Output {
        self.command()
            .arg("tokens")
            .args(args)
            .output()
            .expect("krill-gateway tokens")
    }

    /// Starts the process on a free port and waits for /healthz.
    pub async fn start(&mut self) {
        let port = free_port();
        self.url = format!("http://127.0.0.1:{port}");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log");
        let child = self
            .command()
            .env("KRILL_GATEWAY_LISTEN", format!("127.0.0.1:{port}"))
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawning krill-gateway");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        let http = reqwest::Client::new();
        loop {
            if let Some(Ok(Some(st))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("krill-gateway exited ({st}); log:\n{}", self.log_text());
            }
            if let Ok(r) = http.get(format!("{}/healthz", self.url)).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "krill-gateway did not answer /healthz; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILLs the process.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The bytes of the SQLite database and its WAL.
    pub fn sqlite_bytes(&self) -> Vec<u8> {
        let mut all = Vec::new();
        for ext in ["gateway.db", "gateway.db-wal", "gateway.db-shm"] {
            if let Ok(b) = std::fs::read(self.dir.join(ext)) {
                all.extend(b);
            }
        }
        all
    }
}

impl Drop for GatewayProc {
    /// Kills the process and deletes its event queue (on the shared broker).
    fn drop(&mut self) {
        self.kill();
        let queue = self.queue.clone();
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(crate::delete_queue(&queue));
            }
        })
        .join();
    }
}

/// A JSON call: (status, headers, body as JSON or `null`).
pub async fn call(
    method: reqwest::Method,
    url: &str,
    token: Option<&str>,
    headers: &[(&str, &str)],
    body: Option<Vec<u8>>,
) -> (u16, reqwest::header::HeaderMap, serde_json::Value) {
    let http = reqwest::Client::new();
    let mut req = http.request(method, url);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    if let Some(b) = body {
        req = req.header("content-type", "application/json").body(b);
    }
    let resp = req.send().await.expect("gateway reachable");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = resp.bytes().await.unwrap_or_default();
    let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
    (status, headers, json)
}

/// Whether `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}
