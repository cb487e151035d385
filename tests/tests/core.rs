//! The core path against a real RabbitMQ: submit → worker → process sandbox → result.

use std::time::Duration;

use broker::protocol::{Status, Task};
use broker::topology;
use krill_tests::{client, run_task, task, unique_pool, WorkerBuilder};
use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::BasicProperties;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trip_exit_code_and_outputs() {
    let pool = unique_pool("core");
    let _w = WorkerBuilder::new(&pool).start().await;
    let c = client().await;
    let r = run_task(
        &c,
        &pool,
        &task(r#"echo hello; echo "answer=42" >> "$KRILL_OUTPUT"; exit 3"#),
    )
    .await;
    assert_eq!(r.status, Status::Failed, "{r:?}");
    assert_eq!(r.exit_code, Some(3));
    assert_eq!(r.stdout, "hello\n");
    assert_eq!(r.output("answer"), Some("42"));
    assert_eq!(r.exit_code_for_cli(), 3);
    assert!(r.timings.started_at.is_some() && r.timings.finished_at.is_some());

    let ok = run_task(&c, &pool, &task("echo out; echo err >&2")).await;
    assert_eq!(ok.status, Status::Succeeded);
    assert_eq!((ok.stdout.as_str(), ok.stderr.as_str()), ("out\n", "err\n"));

    let seg = run_task(&c, &pool, &task("kill -SEGV $$")).await;
    assert_eq!(seg.status, Status::Failed);
    assert_eq!(seg.signal, Some(11), "{seg:?}");
    assert_eq!(seg.exit_code_for_cli(), 139);

    let multi = run_task(
        &c,
        &pool,
        &task("{ echo 'notes<<EOF'; echo line1; echo line2; echo EOF; echo 'k=v=w'; } >> \"$KRILL_OUTPUT\""),
    )
    .await;
    assert_eq!(multi.status, Status::Succeeded, "{multi:?}");
    assert_eq!(multi.output("notes"), Some("line1\nline2"));
    assert_eq!(multi.output("k"), Some("v=w"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeout_kills_a_script_that_traps_term_and_its_background_child() {
    let pool = unique_pool("timeout");
    let _w = WorkerBuilder::new(&pool).start().await;
    let c = client().await;
    let mut t = task(
        "trap '' TERM INT; (trap '' TERM; exec sleep 1000) & echo \"bg=$!\" >> \"$KRILL_OUTPUT\"; \
         echo started; while true; do sleep 1; done",
    );
    t.limits.timeout_secs = Some(2);
    let started = std::time::Instant::now();
    let r = run_task(&c, &pool, &t).await;
    assert_eq!(r.status, Status::TimedOut, "{r:?}");
    assert_eq!(r.exit_code_for_cli(), 124);
    assert!(r.stdout.contains("started"));
    assert!(
        started.elapsed() < Duration::from_secs(20),
        "took {:?}",
        started.elapsed()
    );
    assert!(r.output("bg").is_some(), "{r:?}");
    // The background child is gone: no live process carries the task's id (`$!`
    // is a pid in the task's own pid namespace, so it is not looked up here).
    let needle = format!("KRILL_TASK_ID={}", t.id);
    let left: Vec<String> = std::fs::read_dir("/proc")
        .expect("/proc")
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok())
        .filter(|e| {
            let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
            let env = std::fs::read(e.path().join("environ")).unwrap_or_default();
            !stat.contains(") Z ") && env.split(|b| *b == 0).any(|v| v == needle.as_bytes())
        })
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(left.is_empty(), "processes {left:?} outlived the task");
}

async fn publish_raw(pool: &str, body: &[u8], props: BasicProperties) {
    let c = client().await;
    c.channel()
        .basic_publish(
            ShortString::from(topology::TASKS_EXCHANGE),
            ShortString::from(pool),
            BasicPublishOptions {
                mandatory: true,
                ..BasicPublishOptions::default()
            },
            body,
            props,
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_tasks_are_rejected_and_the_worker_keeps_serving() {
    let pool = unique_pool("invalid");
    let _w = WorkerBuilder::new(&pool)
        .arg("--max-timeout")
        .arg("1h")
        .start()
        .await;
    let c = client().await;

    // Raw messages the client library would refuse to send.
    for (body, expect) in [
        (
            r#"{"version":1,"id":"ID","script":"true","colour":"red"}"#.to_string(),
            "colour",
        ),
        (
            r#"{"version":1,"id":"ID","script":"true""#.to_string(),
            "invalid task message",
        ),
        (
            r#"{"version":9,"id":"ID","script":"true"}"#.to_string(),
            "version 9",
        ),
        (
            r#"{"version":1,"id":"ID","script":"   "}"#.to_string(),
            "script is empty",
        ),
        (
            r#"{"version":1,"id":"ID","script":"true","limits":{"timeout_secs":7200}}"#.to_string(),
            "maximum of 3600s",
        ),
    ] {
        let id = krill_tests::new_id();
        let body = body.replace("ID", &id);
        broker::topology::declare_reply_queue(&c.channel(), &id)
            .await
            .expect("reply queue");
        let props = broker::client::task_properties(&Task::new(id.clone(), "x"));
        publish_raw(&pool, body.as_bytes(), props).await;
        let r = c
            .wait(&id, Some(Duration::from_secs(30)))
            .await
            .expect("a result");
        assert_eq!(r.status, Status::Rejected, "{body}: {r:?}");
        let err = r.error.unwrap_or_default();
        assert!(
            err.contains(expect),
            "{body}: error `{err}` should mention `{expect}`"
        );
    }
    // A message with an unparsable id still goes to the dead-letter queue, and
    // the worker still serves.
    publish_raw(&pool, b"\xff\xfe not json", BasicProperties::default()).await;
    let r = run_task(&c, &pool, &task("echo still-serving")).await;
    assert_eq!(r.status, Status::Succeeded);
    assert_eq!(r.stdout, "still-serving\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_never_exceeds_the_slots() {
    let pool = unique_pool("slots");
    let _w = WorkerBuilder::new(&pool)
        .arg("--concurrency")
        .arg("2")
        .start()
        .await;
    let c = client().await;
    let tasks: Vec<Task> = (0..6).map(|_| task("sleep 1")).collect();
    for t in &tasks {
        c.submit(&pool, t).await.expect("submit");
    }
    let mut spans = Vec::new();
    for t in &tasks {
        let r = c
            .wait(&t.id, Some(Duration::from_secs(60)))
            .await
            .expect("result");
        assert_eq!(r.status, Status::Succeeded, "{r:?}");
        spans.push((
            r.timings.started_at.expect("start"),
            r.timings.finished_at.expect("end"),
        ));
    }
    let max_overlap = spans
        .iter()
        .map(|(s, _)| spans.iter().filter(|(s2, e2)| s2 <= s && s < e2).count())
        .max()
        .unwrap_or(0);
    assert_eq!(
        max_overlap, 2,
        "with 2 slots, exactly 2 tasks should overlap at most: {spans:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_script_cannot_read_a_root_only_file() {
    // Bound into the view (tasks see nothing else of the host), so that the
    // file's mode is what refuses the read.
    let dir =
        std::path::Path::new("/var/tmp").join(format!("krill-root-only-{}", krill_tests::new_id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("secret.txt");
    std::fs::write(&file, "root-only-content").expect("write");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");

    let pool = unique_pool("perm");
    let _w = WorkerBuilder::new(&pool)
        .arg("--process-bind")
        .arg(&dir.display().to_string())
        .start()
        .await;
    let c = client().await;
    let r = run_task(&c, &pool, &task(&format!("id -u; cat {}", file.display()))).await;
    assert_eq!(r.status, Status::Failed, "{r:?}");
    assert!(!r.stdout.contains("root-only-content"));
    assert!(r.stderr.contains("Permission denied"), "{r:?}");
    assert_ne!(r.stdout.trim(), "0", "script ran as root");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn environment_is_clean_and_secrets_reach_the_script() {
    let pool = unique_pool("env");
    let _w = WorkerBuilder::new(&pool)
        .env("KRILL_TEST_WORKER_ONLY", "leak-me")
        .start()
        .await;
    let c = client().await;
    let mut t =
        task("env | sort; test -z \"$KRILL_TEST_WORKER_ONLY\"; test \"$TOKEN\" = s3cr3t-value");
    t.env.insert("STAGE".into(), "prod".into());
    t.secrets.insert(
        "TOKEN".into(),
        broker::protocol::Secret("s3cr3t-value".into()).into(),
    );
    let r = run_task(&c, &pool, &t).await;
    assert_eq!(r.status, Status::Succeeded, "{r:?}");
    assert!(r.stdout.contains("STAGE=prod"));
    assert!(
        !r.stdout.contains("KRILL_AMQP_URL"),
        "worker env leaked: {}",
        r.stdout
    );
    assert!(!r.stdout.contains("leak-me"));
    assert!(
        !r.stdout.contains("s3cr3t-value"),
        "secret not masked: {}",
        r.stdout
    );
    assert!(r.stdout.contains("TOKEN=***"));
}

/// `--process-rootfs` with a task image exported to a directory (scripts/images
/// --export-rootfs): a process task sees the image's tools, not the host's, and
/// one submitted to the image's containers sees the same ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_rootfs_shows_the_images_tools() {
    let dir = std::path::PathBuf::from("/var/tmp/krill-test-rootfs-python");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let ok = std::process::Command::new(root.join("scripts/images"))
        .args([
            "--export-rootfs",
            "krill/python:1",
            &dir.display().to_string(),
        ])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "scripts/images --export-rootfs failed");
    let pool = unique_pool("rootfs");
    let _w = WorkerBuilder::new(&pool)
        .arg("--sandbox")
        .arg("process,container")
        .arg("--image")
        .arg("krill/python:1")
        .arg("--process-rootfs")
        .arg(&dir.display().to_string())
        .start()
        .await;
    let c = client().await;
    // gcc and cargo are on the host, not in the image.
    let script = "for t in gcc cargo python3; do command -v $t >/dev/null && echo \"has $t\" || echo \"no $t\"; done; \
                  python3 -c 'import sys; print(sys.version.split()[0])'";
    let mut seen = Vec::new();
    for kind in [
        broker::protocol::SandboxKind::Process,
        broker::protocol::SandboxKind::Container,
    ] {
        let mut t = task(script);
        t.sandbox = Some(kind);
        let r = run_task(&c, &pool, &t).await;
        assert_eq!(r.status, Status::Succeeded, "{kind:?}: {r:?}");
        assert!(
            r.stdout.contains("no gcc") && r.stdout.contains("no cargo"),
            "{kind:?}: {}",
            r.stdout
        );
        assert!(r.stdout.contains("has python3"), "{kind:?}: {}", r.stdout);
        seen.push(r.stdout);
    }
    assert_eq!(seen[0], seen[1], "the two sandboxes show different tools");
}

/// A `BulkClient` caller that submits more tasks than its window before it
/// awaits any ticket (what `failover.rs`'s bulk stream does, and the
/// `BulkClient` docs' example near the default window of 1024) is not held up
/// forever: each window slot is free again once the broker confirms its
/// publish, not only once the caller asks its ticket (before, the fifth
/// submit here never returned: in the fresh-clone run of 2026-12-04 a bulk
/// stream of ~1,000 submissions would have waited 60 s per submit from there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_window_frees_itself_when_nobody_awaits_the_tickets() {
    use broker::bulk::BulkClient;
    let pool = unique_pool("window");
    let _w = WorkerBuilder::new(&pool).start().await;
    let c = BulkClient::connect_with_window(&krill_tests::amqp_url(), 4)
        .await
        .expect("bulk client");
    let mut tickets = Vec::new();
    for i in 0..12 {
        let t = task(&format!("echo {i}"));
        let ticket = tokio::time::timeout(Duration::from_secs(30), c.submit(&pool, &t))
            .await
            .unwrap_or_else(|_| panic!("submit {i} waited 30 s for a window slot of 4"))
            .expect("submit");
        tickets.push(ticket);
    }
    for (i, t) in tickets.into_iter().enumerate() {
        let r = t
            .result(Some(Duration::from_secs(60)))
            .await
            .unwrap_or_else(|e| panic!("task {i}: {e}"));
        assert_eq!(
            (r.status, r.stdout.as_str()),
            (Status::Succeeded, format!("{i}\n").as_str())
        );
    }
    c.close().await;
}
