//! Helpers shared by the end-to-end tests: a real RabbitMQ, real worker processes,
//! unique pools per test so tests run in parallel without seeing each other.
//!
//! When RabbitMQ (or Docker, for container tests) is not reachable, helpers panic
//! with a message saying how to start it: a test never passes silently without it.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use broker::amqp::DEFAULT_AMQP_URL;
use broker::client::Client;
use broker::protocol::{Task, TaskResult};
use broker::topology;
use lapin::options::QueueDeleteOptions;
use lapin::types::ShortString;
use lapin::{Connection, ConnectionProperties};

pub mod gateway;
pub mod trust;

/// The broker tests use (`KRILL_AMQP_URL`, default local).
pub fn amqp_url() -> String {
    std::env::var("KRILL_AMQP_URL").unwrap_or_else(|_| DEFAULT_AMQP_URL.to_string())
}

/// A client, or a panic that says how to start RabbitMQ.
pub async fn client() -> Client {
    match Client::connect(&amqp_url()).await {
        Ok(c) => c,
        Err(e) => panic!(
            "RabbitMQ is not reachable ({e}). Start it with `scripts/test` (which installs and \
             starts it) or `service rabbitmq-server start`."
        ),
    }
}

/// A fresh pool name for one test.
pub fn unique_pool(prefix: &str) -> String {
    format!(
        "t-{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// A fresh task id.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// Directory holding the workspace's built binaries (target/debug).
pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("KRILL_BIN_DIR") {
        return PathBuf::from(dir);
    }
    // tests run from target/<profile>/deps/<name>
    let exe = std::env::current_exe().expect("current exe");
    exe.parent()
        .and_then(|deps| deps.parent())
        .map(PathBuf::from)
        .expect("target dir")
}

/// Path of a workspace binary, or a panic that says how to build it.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: build it first with `cargo build --workspace --bins` (scripts/test does)",
        p.display()
    );
    p
}

/// A `krill-worker` process serving one pool; SIGKILLed and its pool deleted on drop.
#[derive(Debug)]
pub struct WorkerProc {
    pub id: String,
    pub pool: String,
    pub child: Option<Child>,
    pub work_dir: PathBuf,
    pub log: PathBuf,
    /// The broker it talks to (`KRILL_AMQP_URL` of its environment).
    pub url: String,
    delete_pool_on_drop: bool,
}

/// Builder for a worker process.
#[derive(Debug, Clone)]
pub struct WorkerBuilder {
    pub pool: String,
    pub id: String,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
}

impl WorkerBuilder {
    pub fn new(pool: &str) -> Self {
        WorkerBuilder {
            pool: pool.to_string(),
            id: format!("w-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]),
            args: Vec::new(),
            env: Vec::new(),
        }
    }

    pub fn arg(mut self, a: &str) -> Self {
        self.args.push(a.to_string());
        self
    }

    pub fn env(mut self, k: &str, v: &str) -> Self {
        self.env.push((k.to_string(), v.to_string()));
        self
    }

    pub fn id(mut self, id: &str) -> Self {
        self.id = id.to_string();
        self
    }

    /// Lets the worker's process-sandbox tasks see `gates` (a read-only bind
    /// at the same path: files the test makes there later show up inside).
    pub fn gates(self, gates: &Gates) -> Self {
        let dir = gates.dir.display().to_string();
        self.arg("--process-bind").arg(&dir)
    }

    /// Starts the worker and waits until it consumes its pool queue.
    pub async fn start(self) -> WorkerProc {
        let work_dir = std::env::temp_dir().join(format!("krill-test-{}", self.id));
        let log = std::env::temp_dir().join(format!("krill-test-{}.log", self.id));
        let mut w = WorkerProc {
            id: self.id.clone(),
            pool: self.pool.clone(),
            child: None,
            work_dir,
            log,
            url: self
                .env
                .iter()
                .rev()
                .find(|(k, _)| k == "KRILL_AMQP_URL")
                .map_or_else(amqp_url, |(_, v)| v.clone()),
            delete_pool_on_drop: true,
        };
        w.spawn(&self);
        w.wait_consuming().await;
        w
    }
}

impl WorkerProc {
    fn spawn(&mut self, b: &WorkerBuilder) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("worker log file");
        let mut cmd = Command::new(bin("krill-worker"));
        cmd.env("KRILL_AMQP_URL", amqp_url())
            .env("KRILL_POOL", &self.pool)
            .env("KRILL_WORKER_ID", &self.id)
            .env("KRILL_WORK_DIR", &self.work_dir)
            .env("KRILL_HEARTBEAT_INTERVAL", "1s")
            .env("KRILL_STUB_PATH", stub_path())
            .env("RUST_LOG", "info,lapin=warn")
            // Fresh containers carry the task's label, which the leftover checks
            // look for; tests of pre-started containers pass --prestart themselves.
            .env("KRILL_PRESTART", "0")
            // Tests of signing pass --trusted-keys (and KRILL_ALLOW_UNSIGNED=false);
            // every other test runs an open pool, as before signing existed.
            .env("KRILL_ALLOW_UNSIGNED", "true")
            .envs(b.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .args(&b.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log);
        self.child = Some(cmd.spawn().expect("spawning krill-worker"));
    }

    /// The worker's own log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the pool queue has a consumer (the worker is claiming).
    pub async fn wait_consuming(&mut self) {
        // On a cluster a worker restarted under its id may wait until the node
        // that held its last connection lets go of its exclusive control queue
        // (RESOURCE_LOCKED meanwhile): longer when that node is slow or down.
        let bound = if broker::amqp::urls(&self.url).len() > 1 {
            120
        } else {
            30
        };
        let deadline = Instant::now() + Duration::from_secs(bound);
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    panic!(
                        "krill-worker exited early ({status}); log:\n{}",
                        self.log_text()
                    );
                }
            }
            if peek_at(&self.url, &topology::pool_queue(&self.pool))
                .await
                .map(|q| q.consumer_count())
                .unwrap_or(0)
                > 0
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "worker never started consuming; log:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Sends a signal to the worker process.
    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) with a pid we spawned and still own.
            unsafe {
                libc_kill(c.id() as i32, sig);
            }
        }
    }

    /// Waits for the process to exit (up to `timeout`) and returns its exit code.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<i32> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    return status.code();
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        None
    }

    /// Kills the process with SIGKILL (like a crash) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the same worker again (same id and work dir) after a kill.
    pub async fn restart(&mut self, b: &WorkerBuilder) {
        self.kill();
        self.spawn(b);
        self.wait_consuming().await;
    }

    /// The worker's pid (0 once it was killed).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// CPU time (user + system) the worker process itself used so far, in ms
    /// (its sandboxes' processes are not its own: they are not counted).
    pub fn cpu_ms(&self) -> u64 {
        proc_cpu_ms(self.pid())
    }

    /// The worker's resident memory now (`VmRSS`), in KiB.
    pub fn rss_kib(&self) -> u64 {
        proc_status_kib(self.pid(), "VmRSS:")
    }

    /// Keep the pool queue when this handle drops (for tests that hand it over).
    pub fn keep_pool(&mut self) {
        self.delete_pool_on_drop = false;
    }
}

extern "C" {
    #[link_name = "kill"]
    fn libc_kill(pid: i32, sig: i32) -> i32;
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        self.kill();
        if self.delete_pool_on_drop {
            let pool = self.pool.clone();
            // Best effort; a fresh runtime because Drop cannot await.
            let _ = std::thread::spawn(move || {
                if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    rt.block_on(delete_queue(&topology::pool_queue(&pool)));
                    rt.block_on(delete_queue(&topology::claims_stream(&pool)));
                }
            })
            .join();
        }
        // A killed worker leaves the tmpfs it mounts on its work dir (its next
        // start, or another worker's sweep, would unmount it): unmount it here.
        if let Ok(dir) = std::ffi::CString::new(
            self.work_dir
                .join(&self.id)
                .as_os_str()
                .as_encoded_bytes()
                .to_vec(),
        ) {
            // SAFETY: umount2 reads a valid NUL-terminated path.
            unsafe {
                libc::umount2(dir.as_ptr(), libc::MNT_DETACH);
            }
        }
        let _ = std::fs::remove_dir_all(&self.work_dir);
    }
}

/// A directory on the host that the tasks of a worker started with
/// [`WorkerBuilder::gates`] can see: a test makes a file in it to let a script
/// that waits for it go on. Process-sandbox tasks see nothing else of the host,
/// so this is the only way a test's files reach them. Removed on drop.
#[derive(Debug)]
pub struct Gates {
    pub dir: PathBuf,
}

impl Default for Gates {
    fn default() -> Self {
        Self::new()
    }
}

impl Gates {
    pub fn new() -> Self {
        use std::os::unix::fs::PermissionsExt;
        let dir = PathBuf::from(format!(
            "/var/tmp/krill-gates-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        ));
        std::fs::create_dir_all(&dir).expect("gate dir");
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        Gates { dir }
    }

    /// Where gate `name` is (on the host and in the task's view).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Shell that waits until gate `name` is open.
    pub fn wait(&self, name: &str) -> String {
        format!(
            "while [ ! -e {} ]; do sleep 0.1; done",
            self.path(name).display()
        )
    }

    /// Shell that waits until gate `name` is open, `secs` seconds at most.
    pub fn wait_at_most(&self, name: &str, secs: u32) -> String {
        format!(
            "i=0; while [ ! -e {p} ] && [ $i -lt {n} ]; do sleep 0.1; i=$((i+1)); done",
            p = self.path(name).display(),
            n = secs * 10
        )
    }

    /// Opens gate `name`.
    pub fn open(&self, name: &str) {
        std::fs::write(self.path(name), b"").expect("gate file");
    }
}

impl Drop for Gates {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A passive declare of `queue`: its counts, or None when it does not exist.
async fn peek(queue: &str) -> Option<lapin::Queue> {
    peek_at(&amqp_url(), queue).await
}

/// A passive declare of `queue` on the broker at `url`.
async fn peek_at(url: &str, queue: &str) -> Option<lapin::Queue> {
    let conn = broker::amqp::connect_first(url, ConnectionProperties::default())
        .await
        .ok()?;
    let q = broker::amqp::peek(&conn, queue).await.ok().flatten();
    let _ = conn.close(200, ShortString::from("bye")).await;
    q
}

/// Number of consumers of `queue` (None when it does not exist).
pub async fn consumers(queue: &str) -> Option<u32> {
    peek(queue).await.map(|q| q.consumer_count())
}

/// Number of ready messages in `queue`.
pub async fn depth(queue: &str) -> Option<u32> {
    peek(queue).await.map(|q| q.message_count())
}

/// Deletes a queue (best effort).
pub async fn delete_queue(queue: &str) {
    if let Ok(conn) =
        broker::amqp::connect_first(&amqp_url(), ConnectionProperties::default()).await
    {
        if let Ok(ch) = conn.create_channel().await {
            let _ = ch
                .queue_delete(ShortString::from(queue), QueueDeleteOptions::default())
                .await;
        }
        let _ = conn.close(200, ShortString::from("bye")).await;
    }
}

/// Submits a task and waits (up to 60 s) for its result.
pub async fn run_task(client: &Client, pool: &str, task: &Task) -> TaskResult {
    client.submit(pool, task).await.expect("submit");
    client
        .wait(&task.id, Some(Duration::from_secs(60)))
        .await
        .expect("result within 60 s")
}

/// A task with a fresh id.
pub fn task(script: &str) -> Task {
    Task::new(new_id(), script)
}

/// The static krill-stub that `scripts/build-stub` builds (target/krill-stub).
pub fn stub_path() -> PathBuf {
    std::env::var("KRILL_STUB_PATH")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            bin_dir()
                .parent()
                .map(|t| t.join("krill-stub"))
                .unwrap_or_else(|| PathBuf::from("target/krill-stub"))
        })
}

/// A transient queue bound to `krill.events` (e.g. `task.<pool>.started`), or
/// another exchange ([`Events::on`]), for waiting on what workers report.
#[derive(Debug)]
pub struct Events {
    _conn: Connection,
    consumer: lapin::Consumer,
    /// Events [`Events::wait_task`] read while waiting for another task's, kept
    /// for a later `wait_task` (two tasks' events arrive in either order).
    skipped: std::collections::VecDeque<serde_json::Value>,
}

impl Events {
    /// Binds before anything happens, so nothing is missed.
    pub async fn bind(binding: &str) -> Events {
        Events::on(topology::EVENTS_EXCHANGE, binding).await
    }

    /// A transient queue bound to `exchange` with `binding`.
    pub async fn on(exchange: &str, binding: &str) -> Events {
        Events::on_at(&amqp_url(), exchange, binding).await
    }

    /// [`Events::bind`] on the broker (or cluster nodes) `url`.
    pub async fn at(url: &str, binding: &str) -> Events {
        Events::on_at(url, topology::EVENTS_EXCHANGE, binding).await
    }

    async fn on_at(url: &str, exchange: &str, binding: &str) -> Events {
        let conn = broker::amqp::connect_first(url, ConnectionProperties::default())
            .await
            .expect("RabbitMQ reachable");
        let ch = conn.create_channel().await.expect("channel");
        topology::declare_common(&ch).await.expect("declare");
        let tap = broker::amqp::tap(&ch, "", &[(exchange, binding)], "")
            .await
            .expect("tap");
        Events {
            _conn: conn,
            consumer: tap.consumer,
            skipped: std::collections::VecDeque::new(),
        }
    }

    /// The next message's body as it came, or a panic after `timeout`.
    pub async fn next_body(&mut self, timeout: Duration) -> Vec<u8> {
        use futures_util::StreamExt;
        let d = tokio::time::timeout(timeout, self.consumer.next())
            .await
            .expect("a message in time")
            .expect("consumer open")
            .expect("delivery");
        d.data
    }

    /// The next event body as JSON, or a panic after `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> serde_json::Value {
        serde_json::from_slice(&self.next_body(timeout).await).expect("event json")
    }

    /// Waits for a `task_id`'s event; other tasks' events read meanwhile are
    /// kept for their own `wait_task`, oldest first.
    pub async fn wait_task(&mut self, task_id: &str, timeout: Duration) -> serde_json::Value {
        if let Some(i) = self.skipped.iter().position(|v| v["task_id"] == task_id) {
            if let Some(v) = self.skipped.remove(i) {
                return v;
            }
        }
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self.next(left).await;
            if v["task_id"] == task_id {
                return v;
            }
            self.skipped.push_back(v);
        }
    }
}

/// User + system CPU time of process `pid` (itself, not its children), in ms.
pub fn proc_cpu_ms(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces): state is field 3,
    // utime 14, stime 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    // SAFETY: sysconf has no preconditions.
    let hz = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) })
        .unwrap_or(100)
        .max(1);
    (ticks(11) + ticks(12)) * 1000 / hz
}

/// A `kB` line (`VmRSS:`, `VmHWM:`) of `/proc/<pid>/status`.
pub fn proc_status_kib(pid: u32, key: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// A RabbitMQ node of a test's own, on its own port, with settings of its own
/// (e.g. a small `max_message_size`), so a test can make the broker refuse
/// things without touching the shared one. Stopped (and its data removed) on drop.
///
/// Its port is [`private_broker_port`]; the tests of one binary that use one
/// take turns (the node lives as long as this value, which holds the turn).
#[derive(Debug)]
pub struct PrivateBroker {
    pub port: u16,
    pub node: String,
    base: PathBuf,
    _turn: std::sync::MutexGuard<'static, ()>,
}

/// The port of the private broker: `KRILL_TEST_BROKER_PORT`, else 5676 (on a
/// shared machine, give each user a port of their own: the node's name and
/// data directory come from it, and its distribution port is this + 20000).
pub fn private_broker_port() -> u16 {
    std::env::var("KRILL_TEST_BROKER_PORT")
        .ok()
        .and_then(|p| p.parse().ok())
        .unwrap_or(5676)
}

impl PrivateBroker {
    /// Starts a fresh node on [`private_broker_port`] with `conf` lines added
    /// to its `rabbitmq.conf`, waiting until it answers; panics saying why it
    /// did not.
    pub fn start(conf: &[&str]) -> PrivateBroker {
        static TURN: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let turn = TURN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let port = private_broker_port();
        let host = std::process::Command::new("hostname")
            .arg("-s")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        let node = format!("krill-test-{port}@{host}");
        let base = PathBuf::from(format!("/tmp/krill-test-broker-{port}"));
        let b = PrivateBroker {
            port,
            node,
            base,
            _turn: turn,
        };
        b.stop();
        let extra = conf.join("\n");
        let script = format!(
            r#"set -e
base={base}
install -d -o rabbitmq -g rabbitmq "$base"
rm -rf "$base/mnesia"
printf 'listeners.tcp.default = {port}\nlog.file.level = warning\n%s\n' '{extra}' > "$base/rabbitmq.conf"
echo '[].' > "$base/enabled_plugins"
chown rabbitmq:rabbitmq "$base/rabbitmq.conf" "$base/enabled_plugins"
cd /tmp
su rabbitmq -s /bin/sh -c "ulimit -n 65536; RABBITMQ_NODENAME={node} RABBITMQ_NODE_PORT={port} \
  RABBITMQ_DIST_PORT={dist} RABBITMQ_MNESIA_BASE=$base/mnesia RABBITMQ_LOG_BASE=$base/log \
  RABBITMQ_CONFIG_FILE=$base/rabbitmq.conf RABBITMQ_ENABLED_PLUGINS_FILE=$base/enabled_plugins \
  RABBITMQ_PID_FILE=$base/pid rabbitmq-server -detached" >/dev/null 2>&1
for i in $(seq 1 120); do
  timeout 20 rabbitmqctl -q -n {node} await_startup >/dev/null 2>&1 && exit 0
  sleep 1
done
echo "the private node {node} did not start; logs in $base/log" >&2
exit 1"#,
            base = b.base.display(),
            node = b.node,
            dist = u32::from(port) + 20000,
        );
        let out = std::process::Command::new("bash")
            .arg("-c")
            .arg(&script)
            .output()
            .expect("bash");
        assert!(
            out.status.success(),
            "a private RabbitMQ node on port {port} (needs root and the rabbitmq-server \
             package, which scripts/test installs): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        b
    }

    /// Its AMQP URL.
    pub fn url(&self) -> String {
        format!("amqp://127.0.0.1:{}/%2f", self.port)
    }

    /// Runs `rabbitmqctl ARGS` against it.
    pub fn ctl(&self, args: &[&str]) -> std::process::Output {
        std::process::Command::new("timeout")
            .arg("60")
            .arg("rabbitmqctl")
            .args(["-q", "-n", &self.node])
            .args(args)
            .output()
            .expect("rabbitmqctl")
    }

    fn stop(&self) {
        let _ = self.ctl(&["stop"]);
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

impl Drop for PrivateBroker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Runs `scripts/cluster ARGS` (the local three-node cluster) and returns its
/// stdout, or panics with its stderr.
pub fn cluster(args: &[&str]) -> String {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../scripts/cluster");
    let out = std::process::Command::new(script)
        .args(args)
        .output()
        .expect("running scripts/cluster");
    assert!(
        out.status.success(),
        "scripts/cluster {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The local cluster's URLs (`scripts/cluster urls`), starting it first
/// (`scripts/cluster up`, ~75 s on a loaded machine) when a node is not running.
pub fn cluster_urls() -> String {
    let status = cluster(&["status"]);
    if status.lines().take(3).any(|l| l.ends_with(": down")) {
        cluster(&["up"]);
    }
    cluster(&["urls"]).trim().to_string()
}
