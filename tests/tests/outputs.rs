//! Output variables, sensitive values and live logs against a real RabbitMQ and
//! worker: the leak scan (no secret in any log chunk, event, result or worker
//! log line), output caps on the live stream, non-UTF-8 output, malformed and
//! unsafe output files, short values, and `--follow` streaming live.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use broker::protocol::{LogChunk, SandboxKind, Secret, Status, Stream, Task, TaskResult};
use broker::topology;
use futures_util::StreamExt;
use krill_tests::{
    amqp_url, bin, client, run_task, task, unique_pool, Gates, WorkerBuilder, WorkerProc,
};
use lapin::{Connection, ConnectionProperties};

/// Every message published on an exchange while it lives (a queue bound to `#`).
struct Tap {
    bodies: Arc<Mutex<Vec<Vec<u8>>>>,
    _conn: Connection,
}

impl Tap {
    async fn new(exchange: &str) -> Tap {
        let conn = Connection::connect(&amqp_url(), ConnectionProperties::default())
            .await
            .expect("RabbitMQ is not reachable: start it with scripts/test");
        let ch = conn.create_channel().await.expect("channel");
        // The exchanges exist once a client connected (`Client::connect` declares them).
        let _ = client().await;
        let mut consumer = broker::amqp::tap(&ch, "", &[(exchange, "#")], "")
            .await
            .expect("tap")
            .consumer;
        let bodies = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&bodies);
        tokio::spawn(async move {
            while let Some(Ok(d)) = consumer.next().await {
                sink.lock().expect("tap").push(d.data);
            }
        });
        Tap {
            bodies,
            _conn: conn,
        }
    }

    fn texts(&self) -> Vec<String> {
        self.bodies
            .lock()
            .expect("tap")
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect()
    }

    /// The log chunks of one task, in `seq` order.
    fn chunks(&self, task_id: &str) -> Vec<LogChunk> {
        let mut chunks: Vec<LogChunk> = self
            .bodies
            .lock()
            .expect("tap")
            .iter()
            .filter_map(|b| serde_json::from_slice::<LogChunk>(b).ok())
            .filter(|c| c.task_id == task_id)
            .collect();
        chunks.sort_by_key(|c| c.seq);
        chunks
    }

    /// Waits until `done` holds over the bodies seen (panics after 30 s).
    async fn wait_for(&self, what: &str, done: impl Fn(&[String]) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done(&self.texts()) {
            assert!(Instant::now() < deadline, "never saw {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// One stream's live text, chunks concatenated.
fn live_text(chunks: &[LogChunk], stream: Stream) -> String {
    chunks
        .iter()
        .filter(|c| c.stream == stream)
        .map(|c| c.data.as_str())
        .collect()
}

// ---------------------------------------------------------------- leak scan

const SECRET: &str = "hunter2-Sup3rS3cret";
const MULTI: &str = "first-line-AAAA\nsecond-line-BBBB";
/// Built by the script from parts, so the literal is in no message.
const ADDED: &str = "addmask-CCCC-value";
const SENSITIVE: &str = "sensitive-DDDD-value";
const SENSITIVE_LINES: [&str; 2] = ["cert-line-EEEE", "cert-line-FFFF"];
const EARLY: &str = "early-GGGG-value";

/// Every value that must never leave the worker in clear (but as a sensitive
/// output's own value in the result).
fn all_secrets() -> Vec<&'static str> {
    let mut v = vec![SECRET, ADDED, SENSITIVE, EARLY];
    v.extend(MULTI.lines());
    v.extend(SENSITIVE_LINES);
    v
}

const LEAKY_SCRIPT: &str = r#"
ADDED="addmask-$(echo CCCC)-value"
SENS="sensitive-$(echo DDDD)-value"
L1="cert-line-$(echo EEEE)"; L2="cert-line-$(echo FFFF)"
EARLY="early-$(echo GGGG)-value"
echo "base: $SECRET"
echo "stderr: $SECRET" >&2
printf 'split: %s' "$(echo "$SECRET" | cut -c1-7)"; sleep 0.3; printf '%s\n' "$(echo "$SECRET" | cut -c8-)"
printf '%s' "$(echo "$SECRET" | cut -c1-3)" >&2; sleep 0.3; printf '%s\n' "$(echo "$SECRET" | cut -c4-)" >&2
echo "inside: xx${SECRET}yy and ${SECRET}${SECRET}"
echo "multi: $MULTI"
printf '%s\n' "$MULTI" | tail -n 1 >&2
echo "early: $EARLY"
sleep 0.5
echo "::add-mask::$ADDED"
echo "after add-mask: $ADDED"
echo "after add-mask on stderr: $ADDED" >&2
echo "tok=$SENS" >> "$KRILL_SENSITIVE_OUTPUT"
echo "after sensitive: $SENS"
echo "$SENS" >&2
{ echo 'cert<<EOF'; echo "$L1"; echo "$L2"; echo EOF; } >> "$KRILL_SENSITIVE_OUTPUT"
echo "cert: $L1 / $L2"
echo "late=$EARLY" >> "$KRILL_SENSITIVE_OUTPUT"
echo "early again: $EARLY"
echo "plain=$SECRET" >> "$KRILL_OUTPUT"
echo "$SECRET=as-a-name" >> "$KRILL_OUTPUT"
echo "not a name $SECRET=x" >> "$KRILL_OUTPUT"
echo "the end"
exit 3
"#;

async fn leak_scan(w: &WorkerProc, sandbox: Option<SandboxKind>, image: Option<&str>) {
    let logs = Tap::new(topology::LOGS_EXCHANGE).await;
    let events = Tap::new(topology::EVENTS_EXCHANGE).await;
    let c = client().await;
    let mut t = task(LEAKY_SCRIPT);
    t.sandbox = sandbox;
    t.image = image.map(str::to_string);
    t.secrets
        .insert("SECRET".into(), Secret(SECRET.into()).into());
    t.secrets
        .insert("MULTI".into(), Secret(MULTI.into()).into());
    let r = run_task(&c, &w.pool, &t).await;
    let id = t.id.clone();
    logs.wait_for("the last log chunk", |bodies| {
        bodies
            .iter()
            .any(|b| serde_json::from_str::<LogChunk>(b).is_ok_and(|ch| ch.task_id == id && ch.eof))
    })
    .await;
    events
        .wait_for("the finished event", |bodies| {
            bodies
                .iter()
                .any(|b| b.contains(&id) && b.contains("finished"))
        })
        .await;

    // The script really printed everything (masked).
    assert_eq!(r.status, Status::Failed, "{r:?}");
    assert_eq!(r.exit_code, Some(3));
    for line in [
        "base: ***\n",
        "split: ***\n",
        "inside: xx***yy and ***\n",
        "multi: ***\n",
        "early: ***\n",
        "after add-mask: ***\n",
        "after sensitive: ***\n",
        "cert: *** / ***\n",
        "early again: ***\n",
        "the end\n",
    ] {
        assert!(
            r.stdout.contains(line),
            "stdout lacks {line:?}: {}",
            r.stdout
        );
    }
    assert!(!r.stdout.contains("add-mask::"), "{}", r.stdout);
    for line in [
        "stderr: ***\n",
        "***\n***\n",
        "after add-mask on stderr: ***\n",
    ] {
        assert!(
            r.stderr.contains(line),
            "stderr lacks {line:?}: {}",
            r.stderr
        );
    }
    // Sensitive outputs come back, flagged, and only there in clear.
    let out = |n: &str| r.outputs.iter().find(|o| o.name == n).cloned();
    let tok = out("tok").expect("tok");
    assert!(tok.sensitive && tok.value == SENSITIVE, "{r:?}");
    let cert = out("cert").expect("cert");
    assert!(cert.sensitive && cert.value == SENSITIVE_LINES.join("\n"));
    assert_eq!(out("late").expect("late").value, EARLY);
    let plain = out("plain").expect("plain");
    assert!(!plain.sensitive && plain.value == "***", "{plain:?}");
    let errs = r.output_errors.join("\n");
    assert!(
        errs.contains("KRILL_OUTPUT: a variable name contains a masked value")
            && errs.contains("KRILL_OUTPUT: line 3: invalid name"),
        "{errs}"
    );

    // The result as JSON, sensitive values blanked (they are meant to be there).
    let mut shown: TaskResult = r.clone();
    for o in shown.outputs.iter_mut().filter(|o| o.sensitive) {
        o.value = "<sensitive>".into();
    }
    let result_json = serde_json::to_string(&shown).expect("json");
    let chunks = logs.chunks(&t.id);
    assert!(chunks.len() >= 2, "{chunks:?}");
    let live = [
        live_text(&chunks, Stream::Stdout),
        live_text(&chunks, Stream::Stderr),
    ];
    assert!(live[0].contains("base: ***"), "{}", live[0]);
    let log = w.log_text();
    let places: Vec<(&str, String)> = [("result", result_json), ("worker log", log)]
        .into_iter()
        .chain(events.texts().into_iter().map(|e| ("event", e)))
        .collect();
    for secret in all_secrets() {
        for (what, text) in &places {
            assert!(
                !text.contains(secret),
                "{secret:?} leaked in the {what}: {text}"
            );
        }
        // A value echoed before it was written to the sensitive file cannot be
        // masked in chunks already published (documented); everything else is.
        if secret == EARLY {
            continue;
        }
        for body in logs.texts() {
            assert!(
                !body.contains(secret),
                "{secret:?} leaked in a log chunk: {body}"
            );
        }
        for text in &live {
            assert!(
                !text.contains(secret),
                "{secret:?} leaked in the live log: {text}"
            );
        }
    }
    assert!(live[0].contains("early again: ***"), "{}", live[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leak_scan_process_sandbox() {
    let pool = unique_pool("leak");
    let w = WorkerBuilder::new(&pool)
        .env("RUST_LOG", "debug,lapin=warn,amq_protocol=warn")
        .start()
        .await;
    leak_scan(&w, None, None).await;
}

/// Needs Docker and the task images (`scripts/images`), and the container
/// sandbox (`worker/src/sandbox/container/`).
fn require_container_sandbox() {
    let image = Command::new("docker")
        .args(["image", "inspect", "krill/base:1"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    assert!(
        image.is_ok_and(|s| s.success()),
        "Docker or the image krill/base:1 is missing: run `scripts/up --container` \
         (or `scripts/images` with Docker running)"
    );
    let stub = krill_tests::stub_path();
    assert!(
        stub.exists(),
        "{} is missing: run scripts/build-stub",
        stub.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leak_scan_container_sandbox() {
    require_container_sandbox();
    let pool = unique_pool("leakc");
    let w = WorkerBuilder::new(&pool)
        .env(
            "RUST_LOG",
            "debug,lapin=warn,amq_protocol=warn,bollard=warn,hyper=warn",
        )
        .arg("--sandbox")
        .arg("process,container")
        .arg("--image")
        .arg("krill/base:1")
        .start()
        .await;
    leak_scan(&w, Some(SandboxKind::Container), Some("krill/base:1")).await;
}

// ---------------------------------------------------------------- caps

/// Peak resident memory of a process, in bytes.
fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("VmHWM")
        * 1024
}

/// Bytes a process read (pipes included).
fn bytes_read(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).expect("proc io");
    io.lines()
        .find_map(|l| l.strip_prefix("rchar:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("rchar")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endless_output_is_capped_live_and_in_the_result_with_flat_memory() {
    let pool = unique_pool("yes");
    let w = WorkerBuilder::new(&pool).start().await;
    let pid = w.child.as_ref().expect("worker").id();
    let logs = Tap::new(topology::LOGS_EXCHANGE).await;
    let c = client().await;
    let cap: u64 = 64 * 1024;
    let mut t = task("echo start >&2; yes 'krill-yes'");
    t.limits.output_bytes = Some(cap);
    t.limits.timeout_secs = Some(5);
    let (rss0, read0) = (peak_rss(pid), bytes_read(pid));
    let r = run_task(&c, &pool, &t).await;
    let (rss1, read1) = (peak_rss(pid), bytes_read(pid));
    assert_eq!(r.status, Status::TimedOut, "{:?}", r.error);
    assert!(r.truncated);
    assert!(r.stdout.len() as u64 <= cap && r.stdout.len() as u64 > cap - 16);
    assert!(r.stdout.starts_with("krill-yes\nkrill-yes\n"));
    let id = t.id.clone();
    logs.wait_for("the last chunk", |b| {
        b.iter()
            .any(|b| serde_json::from_str::<LogChunk>(b).is_ok_and(|c| c.task_id == id && c.eof))
    })
    .await;
    let chunks = logs.chunks(&t.id);
    let out = live_text(&chunks, Stream::Stdout);
    let err = live_text(&chunks, Stream::Stderr);
    // Live: exactly what the result kept, then one marker on stderr.
    assert_eq!(out, r.stdout, "live stdout differs from the result's");
    assert_eq!(
        err.matches("stdout reached the output limit of 65536 bytes")
            .count(),
        1,
        "{err}"
    );
    assert!(err.starts_with("start\n"), "{err}");
    let seqs: Vec<u64> = chunks.iter().map(|c| c.seq).collect();
    assert_eq!(seqs, (0..chunks.len() as u64).collect::<Vec<_>>());
    // Memory stayed flat while the worker read far more than it kept.
    let read = read1 - read0;
    assert!(read > 64 * cap, "the script produced only {read} bytes");
    assert!(
        rss1 - rss0 < 64 << 20,
        "worker peak RSS grew by {} MiB while reading {} MiB",
        (rss1 - rss0) >> 20,
        read >> 20
    );
}

// ---------------------------------------------------------------- bytes

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_utf8_and_nul_output_keeps_the_result_valid_json() {
    let pool = unique_pool("bytes");
    let _w = WorkerBuilder::new(&pool).start().await;
    let logs = Tap::new(topology::LOGS_EXCHANGE).await;
    let c = client().await;
    let t = task(
        r"printf 'a\377b\000c\n'; printf 'x\376\n' >&2
printf '\342\202'; sleep 0.5; printf '\254 euro\n'
printf 'bad=\377\n' >> $KRILL_OUTPUT; echo 'ok=1' >> $KRILL_OUTPUT",
    );
    // `wait` parses the reply: valid JSON, or it fails.
    let r = run_task(&c, &pool, &t).await;
    assert_eq!(r.status, Status::Succeeded, "{r:?}");
    assert!(r.lossy);
    assert_eq!(r.stdout, "a\u{fffd}b\u{0}c\n€ euro\n");
    assert_eq!(r.stderr, "x\u{fffd}\n");
    assert_eq!(r.output("ok"), Some("1"));
    assert!(r.output("bad").is_none());
    assert!(
        r.output_errors
            .iter()
            .any(|e| e.contains("line 1") && e.contains("not valid UTF-8")),
        "{:?}",
        r.output_errors
    );
    let json = serde_json::to_string(&r).expect("json");
    assert!(json.contains(r"\u0000"), "{json}");
    let id = t.id.clone();
    logs.wait_for("the last chunk", |b| {
        b.iter()
            .any(|b| serde_json::from_str::<LogChunk>(b).is_ok_and(|c| c.task_id == id && c.eof))
    })
    .await;
    // A character split across reads and chunks arrives whole in the live log.
    let chunks = logs.chunks(&t.id);
    assert_eq!(live_text(&chunks, Stream::Stdout), r.stdout, "{chunks:?}");
}

// ---------------------------------------------------------------- output files

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_lines_give_per_line_errors_and_keep_the_rest() {
    let pool = unique_pool("malformed");
    let _w = WorkerBuilder::new(&pool).start().await;
    let c = client().await;
    let r = run_task(
        &c,
        &pool,
        &task(
            r#"{ echo 'first=1'; echo 'no equals sign'; echo '1bad=x'; echo 'second=2';
  echo 'empty<<'; echo 'third=3'; echo 'open<<EOF'; echo 'never closed'; } >> "$KRILL_OUTPUT"
echo 'ok=yes' >> "$KRILL_SENSITIVE_OUTPUT"; echo '=nothing' >> "$KRILL_SENSITIVE_OUTPUT"
echo printed; exit 4"#,
        ),
    )
    .await;
    assert_eq!(r.status, Status::Failed);
    assert_eq!(r.exit_code, Some(4));
    assert_eq!(r.stdout, "printed\n");
    assert_eq!(r.output("first"), Some("1"));
    assert_eq!(r.output("second"), Some("2"));
    assert_eq!(r.output("third"), Some("3"));
    assert_eq!(r.output("ok"), Some("yes"));
    let errs = r.output_errors.join("\n");
    for e in [
        "KRILL_OUTPUT: line 2: expected `name=value`",
        "KRILL_OUTPUT: line 3: invalid name",
        "KRILL_OUTPUT: line 5: `empty<<` has an empty delimiter",
        "KRILL_OUTPUT: line 7: multi-line value is not closed",
        "KRILL_SENSITIVE_OUTPUT: line 2: invalid name",
    ] {
        assert!(errs.contains(e), "missing {e:?} in:\n{errs}");
    }
    assert!(!errs.contains("never closed") && !errs.contains("nothing"));
    // A short sensitive value is returned but not masked: warned by name.
    assert!(
        r.warnings
            .iter()
            .any(|w| w.contains("sensitive output `ok`") && w.contains("shorter than 4 bytes")),
        "{:?}",
        r.warnings
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_files_cannot_be_turned_into_host_files_fifos_or_huge_files() {
    let pool = unique_pool("files");
    let _w = WorkerBuilder::new(&pool).start().await;
    let c = client().await;
    let shadow = std::fs::read_to_string("/etc/shadow").unwrap_or_default();
    let root_line = shadow.lines().next().unwrap_or("root:").to_string();

    // Replacing the files: the directory is root's, so the script cannot.
    let r = run_task(
        &c,
        &pool,
        &task(
            r#"echo 'before=1' >> "$KRILL_OUTPUT"
if ln -sf /etc/shadow "$KRILL_OUTPUT" 2>/dev/null; then echo replaced-symlink; fi
if rm -f "$KRILL_SENSITIVE_OUTPUT" 2>/dev/null && mkfifo "$KRILL_SENSITIVE_OUTPUT" 2>/dev/null; then echo replaced-fifo; fi
if mv "$KRILL_OUTPUT" "$KRILL_OUTPUT.old" 2>/dev/null; then echo moved; fi
echo done"#,
        ),
    )
    .await;
    assert_eq!(r.status, Status::Succeeded, "{r:?}");
    assert_eq!(r.stdout, "done\n", "the script replaced an output file");
    assert_eq!(r.output("before"), Some("1"));
    let json = serde_json::to_string(&r).expect("json");
    assert!(
        !json.contains(&root_line),
        "host file content in the result"
    );

    // A hard link elsewhere would let the worker read a file the script
    // controls the other name of: refused.
    let r = run_task(
        &c,
        &pool,
        &task(r#"echo 'x=1' >> "$KRILL_OUTPUT"; ln "$KRILL_OUTPUT" "$HOME/again" && echo linked"#),
    )
    .await;
    if r.stdout.contains("linked") {
        assert!(r.output("x").is_none(), "{r:?}");
        assert!(
            r.output_errors.iter().any(|e| e.contains("hard links")),
            "{:?}",
            r.output_errors
        );
    }

    // Huge (sparse) and garbage content: a clean error, promptly.
    let started = Instant::now();
    let r = run_task(
        &c,
        &pool,
        &task(
            r#"truncate -s 200M "$KRILL_OUTPUT" && echo sparse
head -c 4096 /dev/urandom >> "$KRILL_SENSITIVE_OUTPUT"; echo garbage"#,
        ),
    )
    .await;
    assert_eq!(r.stdout, "sparse\ngarbage\n", "{r:?}");
    assert!(r.outputs.is_empty(), "{:?}", r.outputs);
    assert!(
        r.output_errors
            .iter()
            .any(|e| e.contains("KRILL_OUTPUT") && e.contains("larger than 1048576 bytes")),
        "{:?}",
        r.output_errors
    );
    assert!(
        r.output_errors
            .iter()
            .any(|e| e.starts_with("KRILL_SENSITIVE_OUTPUT")),
        "{:?}",
        r.output_errors
    );
    assert!(started.elapsed() < Duration::from_secs(60));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_values_are_not_masked_and_warned_by_name_only() {
    let pool = unique_pool("short");
    let _w = WorkerBuilder::new(&pool).start().await;
    let c = client().await;
    let mut t = task(
        r#"echo "pin $PIN"; echo '::add-mask::q%Y'; echo 'tiny=k@W' >> "$KRILL_SENSITIVE_OUTPUT"
echo 'long=long-enough' >> "$KRILL_SENSITIVE_OUTPUT"; echo 'q%Y k@W long-enough'"#,
    );
    t.secrets.insert("PIN".into(), Secret("z!X".into()).into());
    let r = run_task(&c, &pool, &t).await;
    assert_eq!(r.status, Status::Succeeded, "{r:?}");
    assert_eq!(r.stdout, "pin z!X\nq%Y k@W ***\n");
    let warnings = r.warnings.join("\n");
    for name in ["secret `PIN`", "sensitive output `tiny`", "stdout line 2"] {
        assert!(
            r.warnings
                .iter()
                .any(|w| w.contains(name) && w.contains("shorter than 4 bytes")),
            "no warning about {name}: {warnings}"
        );
    }
    for value in ["z!X", "q%Y", "k@W"] {
        assert!(!warnings.contains(value), "a warning shows {value}");
    }
}

// ---------------------------------------------------------------- CLI

fn krill_cmd(pool: &str) -> Command {
    let mut cmd = Command::new(bin("krill"));
    cmd.env("KRILL_AMQP_URL", amqp_url())
        .env("KRILL_POOL", pool);
    cmd
}

/// Reads lines from a child's pipe on a thread.
fn lines(pipe: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn expect_line(rx: &std::sync::mpsc::Receiver<String>, want: &str) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let hit = line.contains(want);
                seen.push(line);
                if hit {
                    return seen;
                }
            }
            Err(_) => panic!("never saw {want:?}; saw {seen:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn submit_follow_streams_while_the_task_runs() {
    let pool = unique_pool("follow");
    let gates = Gates::new();
    let _w = WorkerBuilder::new(&pool).gates(&gates).start().await;
    let script = format!(
        "echo first-line; echo err-line >&2; {}; echo second-line; \
         echo 'k=v' >> \"$KRILL_OUTPUT\"; echo 'tok=sensitive-value' >> \"$KRILL_SENSITIVE_OUTPUT\"; exit 5",
        gates.wait_at_most("go", 30)
    );
    let mut child = krill_cmd(&pool)
        .args(["submit", "--follow", "--", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("krill");
    let out = lines(child.stdout.take().expect("stdout"));
    let err = lines(child.stderr.take().expect("stderr"));
    expect_line(&out, "first-line");
    expect_line(&err, "err-line");
    // Seen while the task is still waiting for the gate.
    assert!(child.try_wait().expect("try_wait").is_none());
    gates.open("go");
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(5));
    let rest: Vec<String> = out.try_iter().collect();
    assert_eq!(rest, ["second-line"]);
    let err: Vec<String> = err.try_iter().collect();
    assert!(err.iter().any(|l| l == "k=v"), "{err:?}");
    assert!(err.iter().any(|l| l == "tok=***"), "{err:?}");
    assert!(
        !err.iter().any(|l| l.contains("sensitive-value")),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_follow_attaches_to_a_running_task_and_leaves_its_result() {
    let pool = unique_pool("logs");
    let gates = Gates::new();
    let _w = WorkerBuilder::new(&pool).gates(&gates).start().await;
    let c = client().await;
    let t: Task = task(&format!(
        "{}; echo first-line; {}; echo second-line; echo 'k=v' >> \"$KRILL_OUTPUT\"; exit 6",
        gates.wait_at_most("one", 30),
        gates.wait_at_most("two", 30)
    ));
    c.submit(&pool, &t).await.expect("submit");
    let mut child = krill_cmd(&pool)
        .args(["logs", &t.id, "--follow"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("krill");
    let out = lines(child.stdout.take().expect("stdout"));
    let err = lines(child.stderr.take().expect("stderr"));
    // Bound: now the first line can come.
    expect_line(&err, "following");
    gates.open("one");
    expect_line(&out, "first-line");
    assert!(child.try_wait().expect("try_wait").is_none());
    gates.open("two");
    let status = child.wait().expect("wait");
    assert_eq!(status.code(), Some(6));
    assert_eq!(out.try_iter().collect::<Vec<_>>(), ["second-line"]);
    let err: Vec<String> = err.try_iter().collect();
    assert!(err.iter().any(|l| l == "k=v"), "{err:?}");
    // `logs` looked at the result without taking it.
    let r = c
        .wait(&t.id, Some(Duration::from_secs(10)))
        .await
        .expect("result still there");
    assert_eq!(r.exit_code, Some(6));
    assert_eq!(r.stdout, "first-line\nsecond-line\n");
}
