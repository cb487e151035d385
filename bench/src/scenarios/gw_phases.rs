//! Where scenario 7's HTTP path spends its time beside the AMQP path's: the
//! client's own timestamps, the gateway's and the worker's `krill::phases`
//! events (wall clock, one host), per task; the p50 of each point's offset
//! from the submit and of each step.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value;

use crate::stats::percentile;

/// Wall-clock µs since the Unix epoch.
pub fn unix_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// What the client saw of one task (wall-clock µs).
#[derive(Debug, Clone)]
pub struct Seen {
    pub id: String,
    /// The submit began (POST sent / AMQP publish).
    pub submit: u64,
    /// HTTP only: the 202 was read.
    pub accepted: Option<u64>,
    /// The result is in the client's hands.
    pub done: u64,
}

/// The `krill::phases` events of a JSON log, by (message, task id).
pub fn events(log: &str) -> HashMap<(String, String), Value> {
    let mut m = HashMap::new();
    for v in log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
    {
        if v["target"] != "krill::phases" {
            continue;
        }
        let (Some(msg), Some(id)) = (v["message"].as_str(), v["task_id"].as_str()) else {
            continue;
        };
        let key = (msg.to_string(), id.to_string());
        // A result recorded twice (the reply and the worker's copy): the first counts.
        m.entry(key).or_insert(v);
    }
    m
}

fn num(v: &Value, k: &str) -> Option<f64> {
    v[k].as_f64()
        .or_else(|| v[k].as_str().and_then(|s| s.parse().ok()))
        .filter(|x| *x > 0.0)
}

/// The points of one HTTP task's life, in order, as µs after its submit.
const HTTP_POINTS: [(&str, &str); 13] = [
    ("received", "the gateway's handler starts"),
    (
        "prepared",
        "the row inserted (before: and the log follower bound)",
    ),
    ("confirmed", "the task's publish confirmed"),
    ("accepted", "the client has the 202"),
    ("worker_start", "the worker's handler starts"),
    ("wait_received", "the gateway's wait handler starts"),
    ("worker_publish", "the worker starts publishing the result"),
    (
        "result_taken",
        "the recorder takes the result (reply or worker's copy)",
    ),
    ("committed", "its batch committed"),
    ("notified", "waiters told"),
    ("woken", "the waiter re-reads the row"),
    ("answered", "the wait's answer is built"),
    ("done", "the client has the result"),
];

fn http_points(
    s: &Seen,
    ev: &HashMap<(String, String), Value>,
) -> Option<HashMap<&'static str, f64>> {
    let get = |m: &str| ev.get(&(m.to_string(), s.id.clone()));
    let sub = get("submit phases")?;
    let prep = get("submit prepared")?;
    let w = get("wait phases")?;
    let rec = get("result recorded")?;
    let task = get("task phases")?;
    let t0 = s.submit as f64;
    let received = num(sub, "received_unix_us")?;
    let mut p = HashMap::new();
    p.insert("received", received);
    p.insert("prepared", num(prep, "prepared_unix_us")?);
    p.insert("confirmed", received + num(sub, "published_us")?);
    p.insert("accepted", s.accepted? as f64);
    p.insert("worker_start", num(task, "start_unix_us")?);
    p.insert("wait_received", num(w, "received_unix_us")?);
    p.insert("worker_publish", num(task, "published_unix_us")?);
    p.insert("result_taken", num(rec, "took_unix_us")?);
    p.insert("committed", num(rec, "committed_unix_us")?);
    p.insert("notified", num(rec, "notified_unix_us")?);
    // Not woken: the row was done at the wait's first read.
    let answered = num(w, "answered_unix_us")?;
    p.insert("woken", num(w, "woken_unix_us").unwrap_or(answered));
    p.insert("answered", answered);
    p.insert("done", s.done as f64);
    Some(p.into_iter().map(|(k, v)| (k, v - t0)).collect())
}

const AMQP_POINTS: [(&str, &str); 3] = [
    ("worker_start", "the worker's handler starts"),
    ("worker_publish", "the worker starts publishing the result"),
    ("done", "the client has the result"),
];

fn amqp_points(
    s: &Seen,
    ev: &HashMap<(String, String), Value>,
) -> Option<HashMap<&'static str, f64>> {
    let task = ev.get(&("task phases".to_string(), s.id.clone()))?;
    let t0 = s.submit as f64;
    let mut p = HashMap::new();
    p.insert("worker_start", num(task, "start_unix_us")? - t0);
    p.insert("worker_publish", num(task, "published_unix_us")? - t0);
    p.insert("done", s.done as f64 - t0);
    Some(p)
}

fn table(
    md: &mut String,
    title: &str,
    points: &[(&str, &str)],
    samples: &[HashMap<&'static str, f64>],
) {
    let p50 = |f: &dyn Fn(&HashMap<&'static str, f64>) -> f64| {
        let mut v: Vec<f64> = samples.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        percentile(&v, 50.0) / 1e3
    };
    let _ = writeln!(md, "\n### {title} ({} tasks)\n", samples.len());
    let _ = writeln!(md, "| point | p50 after submit, ms | p50 step, ms | what |");
    let _ = writeln!(md, "|---|---:|---:|---|");
    let mut prev: Option<&str> = None;
    for (name, what) in points {
        let at = p50(&|s| s[name]);
        let step = match prev {
            Some(q) => p50(&|s| s[name] - s[q]),
            None => at,
        };
        let _ = writeln!(md, "| {name} | {at:.2} | {step:.2} | {what} |");
        prev = Some(name);
    }
}

/// The markdown report: one table per path.
pub fn analyse(http: &[Seen], amqp: &[Seen], ev: &HashMap<(String, String), Value>) -> String {
    let h: Vec<_> = http.iter().filter_map(|s| http_points(s, ev)).collect();
    let a: Vec<_> = amqp.iter().filter_map(|s| amqp_points(s, ev)).collect();
    let mut md = String::from(
        "## Scenario 7: where HTTP submit → result goes, beside AMQP\n\n\
         Wall-clock points of each task (client, gateway and worker on one host), \
         as µs after the submit began; p50 over the tasks. A step is the p50 of \
         the difference to the previous point (steps overlap where the points \
         are not in order, e.g. the worker may start before the confirm is back).\n",
    );
    table(&mut md, "HTTP: POST + wait", &HTTP_POINTS, &h);
    table(&mut md, "bulk AMQP", &AMQP_POINTS, &a);
    md
}
