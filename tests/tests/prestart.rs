//! Pre-started single-use containers (`--prestart`): a task handed a waiting
//! container gives the same result as in a fresh one; the container is removed
//! after and the pool refills; tasks with other limits or with network still
//! work; a SIGTERMed worker leaves no container behind.
//!
//! Needs RabbitMQ, Docker, the task image (`scripts/images`) and the static stub
//! (`scripts/build-stub`); `scripts/test` provides all of them.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::{Duration, Instant};

use broker::protocol::{SandboxKind, Secret, Status, Task, TaskResult};
use krill_tests::{client, run_task, task, unique_pool, WorkerBuilder, WorkerProc};

const IMAGE: &str = "krill/base:1";
const POOL_SIZE: usize = 2;

/// `docker` with `args`; its stdout, or a panic saying how to start Docker.
fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("docker is not runnable ({e}); `scripts/test` installs and starts it")
        });
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}; is the engine running? (`scripts/test` starts it)",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Full ids of the worker's running pre-started containers.
fn prestarted(worker: &str) -> BTreeSet<String> {
    docker(&[
        "ps",
        "-q",
        "--no-trunc",
        "--filter",
        &format!("label=krill.worker={worker}"),
        "--filter",
        "name=krill-prestart-",
    ])
    .lines()
    .map(str::to_string)
    .collect()
}

/// Every container of the worker, running or not.
fn all_containers(worker: &str) -> Vec<String> {
    docker(&[
        "ps",
        "-aq",
        "--no-trunc",
        "--filter",
        &format!("label=krill.worker={worker}"),
    ])
    .lines()
    .map(str::to_string)
    .collect()
}

fn exists(id: &str) -> bool {
    !docker(&["ps", "-aq", "--no-trunc", "--filter", &format!("id={id}")])
        .trim()
        .is_empty()
}

/// Waits (up to 60 s) for `cond`, panicking with `what` otherwise.
async fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn worker(pool: &str, prestart: usize, extra: &[&str]) -> WorkerProc {
    let mut b = WorkerBuilder::new(pool)
        .arg("--sandbox")
        .arg("container")
        .arg("--image")
        .arg(IMAGE)
        .arg("--prestart")
        .arg(&prestart.to_string());
    for a in extra {
        b = b.arg(a);
    }
    b.start().await
}

/// Waits until the pool holds `POOL_SIZE` waiting containers; returns their ids.
async fn full_pool(w: &WorkerProc) -> BTreeSet<String> {
    wait_for("the pre-started pool to fill", || {
        prestarted(&w.id).len() >= POOL_SIZE
    })
    .await;
    prestarted(&w.id)
}

fn container_task(script: &str) -> Task {
    let mut t = task(script);
    t.sandbox = Some(SandboxKind::Container);
    t.image = Some(IMAGE.to_string());
    t
}

/// A task that exercises what a result carries: output, a masked secret,
/// output variables, the user and the exit code.
fn rich_task() -> Task {
    let mut t = container_task(
        "echo \"hello $WHO\"; echo \"token=$TOKEN\"; echo oops >&2; \
         echo \"answer=42\" >> \"$KRILL_OUTPUT\"; echo \"key=$TOKEN\" >> \"$KRILL_SENSITIVE_OUTPUT\"; \
         test \"$(id -u)\" -ne 0 && echo non-root; pwd; ls /; exit 3",
    );
    t.env.insert("WHO".into(), "world".into());
    t.secrets
        .insert("TOKEN".into(), Secret("tok-5up3r-s3cret".into()).into());
    t
}

/// What must be the same whichever container ran the task, as one comparable text.
fn essence(r: &TaskResult) -> String {
    let outputs: Vec<String> = r
        .outputs
        .iter()
        .map(|o| format!("{}={} sensitive={}", o.name, o.value, o.sensitive))
        .collect();
    format!(
        "status={} exit={:?}\nstdout:\n{}\nstderr:\n{}\noutputs: {outputs:?}",
        r.status, r.exit_code, r.stdout, r.stderr
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prestarted_container_gives_the_same_result_is_removed_and_replaced() {
    let c = client().await;
    let fresh_pool = unique_pool("fresh");
    let fresh = worker(&fresh_pool, 0, &[]).await;
    let warm_pool = unique_pool("warm");
    let warm = worker(&warm_pool, POOL_SIZE, &[]).await;
    let waiting = full_pool(&warm).await;

    let expected = run_task(&c, &fresh_pool, &rich_task()).await;
    let id = expected.sandbox_id.clone().expect("a container id");
    assert!(!id.is_empty());
    assert!(
        prestarted(&fresh.id).is_empty(),
        "--prestart 0 starts nothing ahead"
    );
    let got = run_task(&c, &warm_pool, &rich_task()).await;
    assert_eq!(got.status, Status::Failed, "{got:?}");
    assert_eq!(got.exit_code, Some(3));
    assert!(got.stdout.contains("hello world"), "{}", got.stdout);
    assert!(got.stdout.contains("token=***"), "{}", got.stdout);
    assert!(
        !got.stdout.contains("5up3r"),
        "the secret leaked: {}",
        got.stdout
    );
    assert_eq!(essence(&got), essence(&expected));

    let used = got.sandbox_id.clone().expect("a container id");
    assert!(
        waiting.contains(&used),
        "the task ran in {used}, not in one of the pre-started {waiting:?}"
    );
    wait_for("the used container to be removed", || !exists(&used)).await;
    wait_for("the pool to refill", || {
        let now = prestarted(&warm.id);
        now.len() >= POOL_SIZE && !now.contains(&used)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_with_other_limits_or_network_still_run() {
    let c = client().await;
    let pool = unique_pool("warm-limits");
    let w = worker(&pool, POOL_SIZE, &["--allow-network"]).await;

    // Other memory, cpus and pids: a pre-started container, updated before the hand-over.
    let waiting = full_pool(&w).await;
    let mut t = container_task(
        "cat /sys/fs/cgroup/memory/memory.limit_in_bytes 2>/dev/null || cat /sys/fs/cgroup/memory.max; \
         cat /sys/fs/cgroup/pids/pids.max 2>/dev/null || cat /sys/fs/cgroup/pids.max",
    );
    t.limits.memory_bytes = Some(64 << 20);
    t.limits.pids = Some(40);
    t.limits.cpus = Some(0.5);
    let r = run_task(&c, &pool, &t).await;
    assert_eq!(r.status, Status::Succeeded, "{r:?}");
    let mut lines = r.stdout.lines();
    assert_eq!(lines.next(), Some("67108864"), "memory limit: {}", r.stdout);
    let pids: u64 = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or(0);
    assert!((40..=45).contains(&pids), "pids limit: {}", r.stdout);
    let used = r.sandbox_id.clone().expect("container id");
    assert!(waiting.contains(&used), "expected a pre-started container");

    // A task that needs network gets a container created for it.
    let waiting = full_pool(&w).await;
    let mut t =
        container_task("cat /sys/class/net/*/operstate 2>/dev/null | head -5; ls /sys/class/net");
    t.limits.network = true.into();
    let r = run_task(&c, &pool, &t).await;
    assert_eq!(r.status, Status::Succeeded, "{r:?}");
    assert!(
        r.stdout.contains("eth0"),
        "network task has no eth0: {}",
        r.stdout
    );
    let used = r.sandbox_id.clone().expect("container id");
    assert!(
        !waiting.contains(&used),
        "a network task must get a fresh container"
    );

    // Another disk size cannot be changed on a started container: fresh too.
    let mut t = container_task("df -k /work | tail -1");
    t.limits.disk_bytes = Some(16 << 20);
    let r = run_task(&c, &pool, &t).await;
    assert_eq!(r.status, Status::Succeeded, "{r:?}");
    assert!(r.stdout.contains("16384"), "disk size: {}", r.stdout);
    assert!(!waiting.contains(r.sandbox_id.as_deref().unwrap_or_default()));

    // And the default task still gets a pre-started one.
    let waiting = full_pool(&w).await;
    let r = run_task(&c, &pool, &container_task("ls /sys/class/net")).await;
    assert_eq!(r.status, Status::Succeeded, "{r:?}");
    assert_eq!(r.stdout.trim(), "lo", "no network by default: {}", r.stdout);
    assert!(waiting.contains(r.sandbox_id.as_deref().unwrap_or_default()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigtermed_worker_leaves_no_container() {
    let c = client().await;
    let pool = unique_pool("warm-term");
    let mut w = worker(&pool, POOL_SIZE, &[]).await;
    full_pool(&w).await;
    let r = run_task(&c, &pool, &container_task("echo done")).await;
    assert_eq!(r.status, Status::Succeeded, "{r:?}");
    // Let the refill start (a launch in flight at shutdown must be cleaned up too).
    tokio::time::sleep(Duration::from_millis(50)).await;
    w.signal(15);
    let code = w.wait_exit(Duration::from_secs(60)).await;
    assert_eq!(code, Some(0), "log:\n{}", w.log_text());
    let left = all_containers(&w.id);
    assert!(left.is_empty(), "containers left after SIGTERM: {left:?}");
}

/// A crashed worker's pre-started containers stop by themselves (their stdin
/// closes with the worker's attach connection); the next start-up sweep removes
/// them once they have been stopped for the sweep's grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_workers_prestarted_containers_stop_and_are_swept() {
    let pool = unique_pool("warm-crash");
    let b = WorkerBuilder::new(&pool)
        .arg("--sandbox")
        .arg("container")
        .arg("--image")
        .arg(IMAGE)
        .arg("--prestart")
        .arg(&POOL_SIZE.to_string());
    let mut w = b.clone().start().await;
    let before = full_pool(&w).await;
    w.kill();
    wait_for("the crashed worker's waiting containers to stop", || {
        prestarted(&w.id).is_empty()
    })
    .await;
    // The default sweep takes containers stopped for longer than SWEEP_GRACE (30 s),
    // so that it never races a live worker's own clean-up.
    tokio::time::sleep(Duration::from_secs(31)).await;
    w.restart(&b).await;
    wait_for("the crashed run's containers to be swept", || {
        before.iter().all(|id| !exists(id))
    })
    .await;
    let now = full_pool(&w).await;
    assert!(now.is_disjoint(&before));
}
