//! Scenario 7 (issue 16): the gateway path. p50 of HTTP `POST /v1/tasks` + `GET
//! …/wait` beside the bulk AMQP path's submit → result, alternating, same run,
//! same worker; and the history's insert rate: a burst over AMQP, the rate at
//! which the gateway records the finished rows beside the pool's own rate, and
//! the backlog when the burst's last result is in. SQLite always; PostgreSQL
//! too when `KRILL_BENCH_PG_URL` names a database (its tables are made there).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use broker::bulk::BulkClient;
use broker::trust::Identity;
use serde_json::{json, Value};

use super::gw_phases::{analyse, events, unix_us, Seen};
use super::{burst, burst_ids, one, task, Bench};
use crate::procs::WorkerOpts;
use crate::report::Figure;
use crate::stats::{rate, Latency};

/// A `krill-gateway` on a free port watching one pool; killed on drop.
struct Gateway {
    child: Child,
    api: Api,
}

/// Its HTTP API with an admin token.
#[derive(Clone)]
struct Api {
    url: String,
    token: String,
    http: reqwest::Client,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

impl Gateway {
    async fn start(
        b: &Bench,
        dir: &Path,
        key: &Path,
        pool: &str,
        db_url: &str,
    ) -> anyhow::Result<Gateway> {
        let port = free_port()?;
        let queue = format!(
            "krill.gateway.{pool}.{}",
            &uuid::Uuid::new_v4().simple().to_string()[..6]
        );
        let cmd = |c: &mut Command| {
            c.env("KRILL_AMQP_URL", &b.env.amqp_url)
                .env("KRILL_GATEWAY_DATA_DIR", dir)
                .env("KRILL_GATEWAY_DATABASE_URL", db_url)
                .env("KRILL_GATEWAY_KEY", key)
                .env("KRILL_GATEWAY_QUEUE", &queue)
                .env("KRILL_GATEWAY_WATCH", pool)
                .env("KRILL_GATEWAY_LISTEN", format!("127.0.0.1:{port}"))
                // Its phase events, for the table of where the time goes.
                .env("RUST_LOG", "warn,krill::phases=debug")
                .env("KRILL_LOG_FORMAT", "json")
                .stdin(Stdio::null());
        };
        let bin = b.env.bin_dir.join("krill-gateway");
        let mut add = Command::new(&bin);
        cmd(&mut add);
        let out = add
            .args(["tokens", "add", "bench", "--rights", "admin"])
            .output()
            .context("krill-gateway tokens add")?;
        if !out.status.success() {
            bail!("tokens add: {}", String::from_utf8_lossy(&out.stderr));
        }
        let token = String::from_utf8(out.stdout)?.trim().to_string();
        let log = std::fs::File::create(dir.join("gateway.log"))?;
        let mut run = Command::new(&bin);
        cmd(&mut run);
        let child = run
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("starting krill-gateway")?;
        let gw = Gateway {
            child,
            api: Api {
                url: format!("http://127.0.0.1:{port}"),
                token,
                http: reqwest::Client::new(),
            },
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = gw
                .api
                .http
                .get(format!("{}/healthz", gw.api.url))
                .send()
                .await
            {
                if r.status().is_success() {
                    return Ok(gw);
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "krill-gateway did not answer /healthz (log: {})",
                    dir.join("gateway.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Api {
    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let r = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .send()
            .await?;
        let st = r.status();
        let v: Value = r.json().await?;
        if !st.is_success() {
            bail!("GET {path}: {st} {v}");
        }
        Ok(v)
    }

    /// One task over HTTP: submit, then the long poll until its result.
    async fn one(&self, pool: &str, script: &str) -> anyhow::Result<(Duration, bool, Seen)> {
        let submit = unix_us();
        let t0 = Instant::now();
        let r = self
            .http
            .post(format!("{}/v1/tasks?pool={pool}", self.url))
            .bearer_auth(&self.token)
            .body(json!({"script": script, "sandbox": "process"}).to_string())
            .send()
            .await?;
        let st = r.status();
        let v: Value = r.json().await?;
        if st.as_u16() != 202 {
            bail!("POST /v1/tasks: {st} {v}");
        }
        let accepted = Some(unix_us());
        let id = v["id"].as_str().context("no id")?.to_string();
        let done = self
            .get(&format!("/v1/tasks/{id}/wait?timeout=120"))
            .await?;
        let seen = Seen {
            id,
            submit,
            accepted,
            done: unix_us(),
        };
        Ok((t0.elapsed(), done["status"] == "succeeded", seen))
    }

    /// Finished rows of `pool` in the history (pages of 100).
    async fn finished(&self, pool: &str) -> anyhow::Result<usize> {
        let mut n = 0;
        let mut before: Option<i64> = None;
        loop {
            let mut path = format!("/v1/tasks?pool={pool}&state=finished&limit=100");
            if let Some(b) = before {
                path.push_str(&format!("&before={b}"));
            }
            let page = self.get(&path).await?;
            n += page["tasks"].as_array().map_or(0, Vec::len);
            match page["next"].as_i64() {
                Some(b) => before = Some(b),
                None => return Ok(n),
            }
        }
    }
}

pub async fn gateway(b: &mut Bench) -> anyhow::Result<()> {
    let n = b.opts.latency_tasks;
    let m = b.opts.tasks;
    let cmd = "echo hi";
    println!("== 7. the gateway: HTTP vs AMQP p50 ({n} tasks each), history insert rate ({m}-task burst)");
    let dir: PathBuf =
        std::env::temp_dir().join(format!("krill-bench-gw-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let me = Identity::generate("gateway")?;
    let key = dir.join("gateway.key");
    me.save(&key)?;
    let trusted = dir.join("trusted-keys");
    std::fs::write(&trusted, format!("{} control\n", me.public_line()))?;
    let mut opts = WorkerOpts::process(2);
    // The gateway's tasks are signed; the AMQP client's are not (allowed).
    opts.env.extend([
        ("KRILL_TRUSTED_KEYS".into(), trusted.display().to_string()),
        (
            "RUST_LOG".into(),
            "info,lapin=warn,krill::phases=debug".into(),
        ),
        ("KRILL_LOG_FORMAT".into(), "json".into()),
    ]);
    let w = b.env.worker(&opts).await?;
    let client = BulkClient::connect(&b.env.amqp_url).await?;

    let mut dbs = vec![(
        "SQLite",
        format!("sqlite://{}", dir.join("gateway.db").display()),
    )];
    if let Ok(pg) = std::env::var("KRILL_BENCH_PG_URL") {
        dbs.push(("PostgreSQL", pg));
    }
    for (i, (db, url)) in dbs.iter().enumerate() {
        let gw = match Gateway::start(b, &dir, &key, &w.pool, url).await {
            Ok(g) => g,
            Err(e) => {
                b.report
                    .note(format!("gateway on {db} did not start: {e:#}"));
                continue;
            }
        };
        if i == 0 {
            let (http, amqp) = latency(b, &gw.api, &client, &w.pool, cmd, n).await?;
            let mut ev = events(&std::fs::read_to_string(dir.join("gateway.log"))?);
            ev.extend(events(&std::fs::read_to_string(&w.log)?));
            let md = analyse(&http, &amqp, &ev);
            std::fs::write(b.opts.out.join("gateway-phases.md"), &md)?;
            println!("{md}");
            b.report.note(format!(
                "scenario 7: where the HTTP path's time goes in {}",
                b.opts.out.join("gateway-phases.md").display()
            ));
        }
        history(b, &gw, &client, &w.pool, db, m).await?;
    }
    client.close().await;
    w.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

async fn latency(
    b: &mut Bench,
    gw: &Api,
    client: &BulkClient,
    pool: &str,
    cmd: &str,
    n: usize,
) -> anyhow::Result<(Vec<Seen>, Vec<Seen>)> {
    burst(client, pool, 10, || task(cmd)).await?;
    for _ in 0..10 {
        gw.one(pool, cmd).await?;
    }
    let (mut http, mut amqp) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let (mut http_seen, mut amqp_seen) = (Vec::with_capacity(n), Vec::with_capacity(n));
    let mut failed = 0;
    for _ in 0..n {
        let t = task(cmd);
        let submit = unix_us();
        let (d, ok) = one(client, pool, &t).await?;
        amqp_seen.push(Seen {
            id: t.id,
            submit,
            accepted: None,
            done: unix_us(),
        });
        amqp.push(d);
        failed += usize::from(!ok);
        let (d, ok, seen) = gw.one(pool, cmd).await?;
        http.push(d);
        http_seen.push(seen);
        failed += usize::from(!ok);
    }
    if failed > 0 {
        b.report.note(format!(
            "gateway: {failed} of {} latency tasks did not succeed",
            2 * n
        ));
    }
    let (h, a) = (Latency::of(&http), Latency::of(&amqp));
    b.report.row(
        "7",
        "p50 HTTP POST + wait → result (gateway)",
        Some(Figure::ms(h.p50_ms)),
        "bulk AMQP submit → result, same worker, alternating",
        Some(Figure::ms(a.p50_ms)),
    );
    b.report.row(
        "7",
        "p99 HTTP POST + wait → result (gateway)",
        Some(Figure::ms(h.p99_ms)),
        "bulk AMQP submit → result",
        Some(Figure::ms(a.p99_ms)),
    );
    let more = h.p50_ms - a.p50_ms;
    b.report.goal(
        "7: the gateway path under 2 ms more than AMQP (p50)",
        Some(more < 2.0),
        format!("+{more:.2} ms ({:.2} vs {:.2} ms)", h.p50_ms, a.p50_ms),
    );
    Ok((http_seen, amqp_seen))
}

async fn history(
    b: &mut Bench,
    gw: &Gateway,
    client: &BulkClient,
    pool: &str,
    db: &str,
    m: usize,
) -> anyhow::Result<()> {
    let base = gw.api.finished(pool).await?;
    // The history's count, polled beside the burst: (when, finished rows).
    let seen: Arc<Mutex<Vec<(Duration, usize)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let poller = {
        let (seen, stop) = (seen.clone(), stop.clone());
        let (api, pool) = (gw.api.clone(), pool.to_string());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                if let Ok(c) = api.finished(&pool).await {
                    seen.lock()
                        .expect("lock")
                        .push((t0.elapsed(), c.saturating_sub(base)));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let done = burst_ids(client, pool, m, || task("true")).await?;
    let burst_end = t0.elapsed();
    // Then until every row is recorded, or the count stood still for 5 s.
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut last, mut since) = (0, Instant::now());
    loop {
        let now = seen.lock().expect("lock").last().map_or(0, |s| s.1);
        if now >= m || Instant::now() > deadline || since.elapsed() > Duration::from_secs(5) {
            break;
        }
        if now != last {
            (last, since) = (now, Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop.store(true, Ordering::Relaxed);
    let _ = poller.await;
    let seen = seen.lock().expect("lock").clone();
    let at_end = seen
        .iter()
        .rev()
        .find(|s| s.0 <= burst_end)
        .map_or(0, |s| s.1);
    let (recorded, all_at) = seen
        .iter()
        .find(|s| s.1 >= m)
        .map(|s| (s.1, s.0))
        .or_else(|| seen.last().map(|s| (s.1, s.0)))
        .unwrap_or((0, burst_end));
    b.report.row(
        "7",
        &format!("history: finished rows recorded /s ({db}, {m}-task burst over AMQP)"),
        Some(Figure::per_sec(rate(recorded, all_at))),
        "the pool's own rate in the same burst",
        Some(Figure::per_sec(rate(m, done.took))),
    );
    b.report.note(format!(
        "gateway history ({db}): {recorded} of {m} rows recorded {:.1} s after the burst began; \
         the burst's last result came at {:.1} s with {} rows recorded (backlog {}); {} failed",
        all_at.as_secs_f64(),
        burst_end.as_secs_f64(),
        at_end,
        m.saturating_sub(at_end),
        done.failed
    ));
    b.report.goal(
        &format!("7: no history backlog at the pool's full rate ({db})"),
        Some(recorded >= m && all_at <= burst_end + Duration::from_secs(1)),
        format!(
            "all rows {:.1} s after the last result",
            all_at.saturating_sub(burst_end).as_secs_f64()
        ),
    );
    Ok(())
}
