//! The broker cluster's health as `krill status` shows it: which nodes run, and
//! for every replicated Krill queue its leader and whether members are missing
//! or offline — read from RabbitMQ's management HTTP API (`/api/nodes`,
//! `/api/queues`), the one place the broker tells it.
//!
//! [`assess`] turns the API's two JSON answers into a [`ClusterHealth`] (pure,
//! unit-tested); [`gather`] asks the first management URL of a list that
//! answers. Plain HTTP only (the workspace's `reqwest` has no TLS feature): a
//! management listener behind TLS is read through a local port-forward.

use std::collections::BTreeSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::topology::{POOL_QUEUE_PREFIX, REPLY_QUEUE_PREFIX};

/// RabbitMQ's default initial group size of a quorum queue or stream
/// (`quorum_cluster_size`, 3 in 3.10), the target a queue is measured against
/// (or the number of nodes, when fewer).
pub const TARGET_GROUP_SIZE: usize = 3;

/// How long one management request may take.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// One node as the management API lists it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeHealth {
    pub name: String,
    pub running: bool,
}

/// One replicated queue (quorum queue or stream) of Krill's.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct QueueHealth {
    pub name: String,
    /// `quorum` or `stream`.
    pub kind: String,
    /// The node of its leader (`None`: no leader now, e.g. quorum lost).
    pub leader: Option<String>,
    pub members: Vec<String>,
    /// The members that are up.
    pub online: Vec<String>,
    /// How many members it should have: [`TARGET_GROUP_SIZE`], or the node count when smaller.
    pub target: usize,
}

impl QueueHealth {
    /// Members missing (fewer than the target) or offline.
    pub fn short(&self) -> bool {
        self.members.len() < self.target || self.online.len() < self.members.len()
    }

    /// Whether a majority of its members is up (quorum queues and streams
    /// need one to take writes).
    pub fn has_quorum(&self) -> bool {
        self.online.len() * 2 > self.members.len()
    }
}

/// The cluster as the management API of one node sees it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClusterHealth {
    /// The management URL that answered (password removed).
    pub source: String,
    pub nodes: Vec<NodeHealth>,
    /// Pool queues, the dead-letter queues and Krill's streams.
    pub queues: Vec<QueueHealth>,
    /// Per-task reply queues (`krill.reply.*`), counted rather than listed.
    pub reply_queues: usize,
    /// Those of them short of members (see [`QueueHealth::short`]).
    pub reply_queues_short: usize,
}

impl ClusterHealth {
    /// Nodes running, and in all.
    pub fn nodes_up(&self) -> (usize, usize) {
        (
            self.nodes.iter().filter(|n| n.running).count(),
            self.nodes.len(),
        )
    }
}

/// Why the cluster's health could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("no management URL given")]
    NoUrl,
    #[error("management API at {url}: {why}")]
    Http { url: String, why: String },
    #[error("management API at {url}: unexpected answer: {why}")]
    Parse { url: String, why: String },
}

#[derive(Deserialize)]
struct ApiNode {
    name: String,
    #[serde(default)]
    running: bool,
}

#[derive(Deserialize)]
struct ApiQueue {
    name: String,
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    leader: Option<String>,
    /// A stream's leader (its `leader` field is absent in 3.10).
    #[serde(default)]
    node: Option<String>,
    #[serde(default)]
    members: Option<Vec<String>>,
    #[serde(default)]
    online: Option<Vec<String>>,
}

/// The health from the API's answers to `/api/nodes` and `/api/queues/<vhost>`.
/// Only Krill's replicated queues count (names under `krill.`, type quorum or
/// stream); classic ones (control queues, taps) live on one node by design.
pub fn assess(
    source: &str,
    nodes: &serde_json::Value,
    queues: &serde_json::Value,
) -> Result<ClusterHealth, String> {
    let nodes: Vec<ApiNode> =
        serde_json::from_value(nodes.clone()).map_err(|e| format!("/api/nodes: {e}"))?;
    let queues: Vec<ApiQueue> =
        serde_json::from_value(queues.clone()).map_err(|e| format!("/api/queues: {e}"))?;
    let target = TARGET_GROUP_SIZE.min(nodes.len().max(1));
    let mut health = ClusterHealth {
        source: source.to_string(),
        nodes: nodes
            .into_iter()
            .map(|n| NodeHealth {
                name: n.name,
                running: n.running,
            })
            .collect(),
        queues: Vec::new(),
        reply_queues: 0,
        reply_queues_short: 0,
    };
    for q in queues {
        if !q.name.starts_with("krill.") || !matches!(q.kind.as_str(), "quorum" | "stream") {
            continue;
        }
        let members = q.members.unwrap_or_default();
        // The API omits `online` for a queue with no member up.
        let online = q.online.unwrap_or_default();
        let q = QueueHealth {
            name: q.name,
            kind: q.kind,
            leader: q
                .leader
                .or(q.node)
                .filter(|l| !l.is_empty() && online.contains(l)),
            members: sorted(members),
            online: sorted(online),
            target,
        };
        if q.name.starts_with(REPLY_QUEUE_PREFIX) {
            health.reply_queues += 1;
            health.reply_queues_short += usize::from(q.short());
        } else {
            health.queues.push(q);
        }
    }
    health
        .queues
        .sort_by(|a, b| order(&a.name).cmp(&order(&b.name)));
    Ok(health)
}

/// Pool queues first, then the rest by name.
fn order(name: &str) -> (bool, &str) {
    (!name.starts_with(POOL_QUEUE_PREFIX), name)
}

fn sorted(v: Vec<String>) -> Vec<String> {
    v.into_iter().collect::<BTreeSet<_>>().into_iter().collect()
}

/// Splits `http://user:pass@host:port/` into the URL without credentials (and
/// without a trailing `/`) and the credentials, percent-decoded (the
/// fallback's when the URL names no user).
fn credentials(url: &str, fallback: (&str, &str)) -> (String, String, String) {
    let bare = |u: &reqwest::Url| u.as_str().trim_end_matches('/').to_string();
    match reqwest::Url::parse(url.trim()) {
        Ok(mut u) if !u.username().is_empty() => {
            let user = percent_decode(u.username());
            let pass = percent_decode(u.password().unwrap_or(""));
            // Both succeed on a URL that has a host, as one with a user has.
            let _ = u.set_username("");
            let _ = u.set_password(None);
            (bare(&u), user, pass)
        }
        Ok(u) => (bare(&u), fallback.0.to_string(), fallback.1.to_string()),
        Err(_) => (
            url.trim().trim_end_matches('/').to_string(),
            fallback.0.to_string(),
            fallback.1.to_string(),
        ),
    }
}

/// The user and password of the first AMQP URL (`guest`/`guest`, RabbitMQ's
/// default, when it names none): the management API's default credentials.
pub fn amqp_credentials(amqp_urls: &str) -> (String, String) {
    let first = crate::amqp::urls(amqp_urls).into_iter().next();
    if let Some(u) = first {
        let (_, user, pass) = credentials(u, ("", ""));
        if !user.is_empty() {
            return (user, pass);
        }
    }
    ("guest".into(), "guest".into())
}

fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

/// Reads the cluster's health from the first of `mgmt_urls` (comma-separated)
/// that answers; `creds` for URLs that name no user.
pub async fn gather(mgmt_urls: &str, creds: (&str, &str)) -> Result<ClusterHealth, ClusterError> {
    let http = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .build()
        .map_err(|e| ClusterError::Http {
            url: String::new(),
            why: e.to_string(),
        })?;
    let mut last = ClusterError::NoUrl;
    for url in mgmt_urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
    {
        let (base, user, pass) = credentials(url, creds);
        let get = |path: &'static str| {
            let req = http
                .get(format!("{base}{path}"))
                .basic_auth(&user, Some(&pass));
            async move {
                let resp = req.send().await.map_err(|e| e.to_string())?;
                let status = resp.status();
                if !status.is_success() {
                    return Err(format!("{path}: HTTP {status}"));
                }
                resp.json::<serde_json::Value>()
                    .await
                    .map_err(|e| format!("{path}: {e}"))
            }
        };
        let answers = async {
            let nodes = get("/api/nodes?columns=name,running").await?;
            let queues =
                get("/api/queues/%2F?columns=name,type,leader,node,members,online").await?;
            Ok::<_, String>((nodes, queues))
        }
        .await;
        match answers {
            Ok((nodes, queues)) => {
                return assess(&base, &nodes, &queues).map_err(|why| ClusterError::Parse {
                    url: base.clone(),
                    why,
                })
            }
            Err(why) => last = ClusterError::Http { url: base, why },
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn nodes(down: &[&str]) -> serde_json::Value {
        json!(["rabbit-1@h", "rabbit-2@h", "rabbit-3@h"]
            .iter()
            .map(|n| json!({"name": n, "running": !down.contains(n)}))
            .collect::<Vec<_>>())
    }

    #[test]
    fn a_healthy_cluster_has_every_member_online() {
        let queues = json!([
            {"name": "krill.pool.a", "type": "quorum", "leader": "rabbit-2@h",
             "members": ["rabbit-3@h", "rabbit-1@h", "rabbit-2@h"],
             "online": ["rabbit-1@h", "rabbit-2@h", "rabbit-3@h"]},
            {"name": "krill.dead", "type": "quorum", "leader": "rabbit-1@h",
             "members": ["rabbit-1@h", "rabbit-2@h", "rabbit-3@h"],
             "online": ["rabbit-1@h", "rabbit-2@h", "rabbit-3@h"]},
            {"name": "krill.control.worker.w1", "type": "classic"},
            {"name": "other.q", "type": "quorum", "members": ["rabbit-1@h"], "online": []},
        ]);
        let h = assess("http://n1", &nodes(&[]), &queues).expect("assess");
        assert_eq!(h.nodes_up(), (3, 3));
        assert_eq!(
            h.queues.iter().map(|q| q.name.as_str()).collect::<Vec<_>>(),
            ["krill.pool.a", "krill.dead"],
            "pool queues first; classic and foreign queues left out"
        );
        assert!(h.queues.iter().all(|q| !q.short() && q.has_quorum()));
        assert_eq!(h.queues[1].leader.as_deref(), Some("rabbit-1@h"));
        assert_eq!(
            h.queues[0].members,
            ["rabbit-1@h", "rabbit-2@h", "rabbit-3@h"]
        );
    }

    #[test]
    fn a_node_down_makes_queues_short_and_quorum_loss_is_told() {
        let queues = json!([
            {"name": "krill.pool.a", "type": "quorum", "leader": "rabbit-2@h",
             "members": ["rabbit-1@h", "rabbit-2@h", "rabbit-3@h"],
             "online": ["rabbit-1@h", "rabbit-2@h"]},
            {"name": "krill.cancellations", "type": "stream", "node": "rabbit-3@h",
             "members": ["rabbit-1@h", "rabbit-2@h", "rabbit-3@h"],
             "online": ["rabbit-1@h"]},
            {"name": "krill.reply.t1", "type": "quorum", "leader": "rabbit-1@h",
             "members": ["rabbit-1@h", "rabbit-2@h"], "online": ["rabbit-1@h", "rabbit-2@h"]},
            {"name": "krill.reply.t2", "type": "quorum", "leader": "rabbit-1@h",
             "members": ["rabbit-1@h", "rabbit-2@h", "rabbit-3@h"],
             "online": ["rabbit-1@h", "rabbit-2@h", "rabbit-3@h"]},
        ]);
        let h = assess("http://n1", &nodes(&["rabbit-3@h"]), &queues).expect("assess");
        assert_eq!(h.nodes_up(), (2, 3));
        let pool = &h.queues[0];
        assert!(pool.short() && pool.has_quorum(), "{pool:?}");
        let cancel = h
            .queues
            .iter()
            .find(|q| q.name == "krill.cancellations")
            .expect("stream");
        assert!(!cancel.has_quorum(), "{cancel:?}");
        assert_eq!(
            cancel.leader, None,
            "a leader that is not online is no leader"
        );
        assert_eq!((h.reply_queues, h.reply_queues_short), (2, 1));
    }

    #[test]
    fn credentials_come_from_the_url_or_the_amqp_url() {
        assert_eq!(
            credentials("http://ops:s3cret@127.0.0.1:15672/", ("guest", "guest")),
            (
                "http://127.0.0.1:15672".into(),
                "ops".into(),
                "s3cret".into()
            )
        );
        assert_eq!(
            credentials("http://ops:p%40ss@h:15672/api/", ("guest", "guest")),
            ("http://h:15672/api".into(), "ops".into(), "p@ss".into())
        );
        assert_eq!(
            credentials("http://127.0.0.1:15672", ("krill", "pw")),
            ("http://127.0.0.1:15672".into(), "krill".into(), "pw".into())
        );
        assert_eq!(
            amqp_credentials("amqp://krill:p%40ss@h1:5672/%2f,amqp://h2"),
            ("krill".into(), "p@ss".into())
        );
        assert_eq!(
            amqp_credentials("amqp://h1"),
            ("guest".into(), "guest".into())
        );
    }

    #[test]
    fn an_unexpected_answer_is_an_error_not_a_panic() {
        assert!(assess("u", &json!({"error": "x"}), &json!([])).is_err());
    }
}
