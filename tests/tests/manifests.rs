//! The deploy/ manifests parse, and the names in them are the ones the code uses:
//! env vars and flags from the worker's clap `Config`, queue names from
//! `broker::topology`, HTTP paths and the metrics port from `worker::http`,
//! metric names from `worker::metrics`, grace periods from the drain. Each test
//! reads the files; nothing here copies a value from them.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::CommandFactory;
use serde_yaml::Value as Yaml;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn read(rel: &str) -> String {
    let p = root().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("reading {}: {e}", p.display()))
}

fn yaml(rel: &str) -> Yaml {
    serde_yaml::from_str(&read(rel)).unwrap_or_else(|e| panic!("{rel} is not valid YAML: {e}"))
}

fn yaml_docs(rel: &str) -> Vec<Yaml> {
    let text = read(rel);
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| {
            serde::Deserialize::deserialize(d)
                .unwrap_or_else(|e| panic!("{rel} is not valid YAML: {e}"))
        })
        .filter(|v: &Yaml| !v.is_null())
        .collect()
}

fn s(v: &Yaml) -> String {
    match v {
        Yaml::String(s) => s.clone(),
        Yaml::Number(n) => n.to_string(),
        Yaml::Bool(b) => b.to_string(),
        other => panic!("expected a scalar, got {other:?}"),
    }
}

/// The worker's flags (`--long`) and env vars, from its clap definition.
struct WorkerCli {
    flags: BTreeSet<String>,
    envs: BTreeSet<String>,
}

fn worker_cli() -> WorkerCli {
    let cmd = worker::config::Config::command();
    let mut flags = BTreeSet::new();
    let mut envs = BTreeSet::new();
    for arg in cmd.get_arguments() {
        if let Some(l) = arg.get_long() {
            flags.insert(format!("--{l}"));
        }
        if let Some(e) = arg.get_env() {
            envs.insert(e.to_string_lossy().into_owned());
        }
    }
    assert!(envs.contains("KRILL_POOL") && flags.contains("--pool"));
    WorkerCli { flags, envs }
}

impl WorkerCli {
    fn check_env(&self, file: &str, name: &str) {
        if name.starts_with("KRILL_") {
            assert!(
                self.envs.contains(name),
                "{file}: {name} is not an env var of krill-worker (known: {:?})",
                self.envs
            );
        }
    }

    fn check_flags(&self, file: &str, words: &[String]) {
        for w in words {
            if let Some(flag) = w.strip_prefix("--") {
                let flag = format!("--{}", flag.split('=').next().unwrap_or(flag));
                assert!(
                    self.flags.contains(&flag),
                    "{file}: {flag} is not a flag of krill-worker"
                );
            }
        }
    }
}

/// The default of a worker setting, from its clap definition.
fn worker_default(env: &str) -> String {
    let cmd = worker::config::Config::command();
    let arg = cmd
        .get_arguments()
        .find(|a| a.get_env().is_some_and(|e| e == env))
        .unwrap_or_else(|| panic!("no worker setting reads {env}"));
    arg.get_default_values()
        .first()
        .map(|v| v.to_string_lossy().into_owned())
        .unwrap_or_else(|| panic!("{env} has no default"))
}

fn duration(v: &str) -> Duration {
    humantime::parse_duration(v.trim()).unwrap_or_else(|e| panic!("`{v}` is not a duration: {e}"))
}

/// What a stop must allow: the drain grace, then publishing the results.
fn needed_stop_time(grace: &str) -> Duration {
    duration(grace) + worker::daemon::PUBLISH_GRACE
}

fn metrics_port(addr: &str) -> u16 {
    addr.parse::<SocketAddr>()
        .unwrap_or_else(|e| panic!("KRILL_METRICS_ADDR `{addr}`: {e}"))
        .port()
}

/// `KEY: value` env of a Compose service.
fn compose_env(service: &Yaml) -> HashMap<String, String> {
    match &service["environment"] {
        Yaml::Mapping(m) => m.iter().map(|(k, v)| (s(k), s(v))).collect(),
        Yaml::Sequence(list) => list
            .iter()
            .map(|kv| {
                let kv = s(kv);
                let (k, v) = kv.split_once('=').unwrap_or((&kv, ""));
                (k.to_string(), v.to_string())
            })
            .collect(),
        _ => HashMap::new(),
    }
}

#[test]
fn compose_names_match_the_code() {
    let cli = worker_cli();
    let file = "deploy/compose/docker-compose.yml";
    let compose = yaml(file);
    let services = compose["services"].as_mapping().expect("services");
    for name in ["rabbitmq", "worker", "prometheus"] {
        assert!(services.contains_key(name), "{file}: no `{name}` service");
    }
    let worker = &compose["services"]["worker"];
    let env = compose_env(worker);
    for k in env.keys() {
        cli.check_env(file, k);
    }
    // Scalable: no fixed container name, no published host port.
    assert!(
        worker["container_name"].is_null(),
        "{file}: container_name stops --scale"
    );
    assert!(
        worker["ports"].is_null(),
        "{file}: published worker ports stop --scale"
    );
    // The broker URL names the rabbitmq service.
    let url = &env["KRILL_AMQP_URL"];
    assert!(url.contains("@rabbitmq:5672/"), "{file}: {url}");
    // The container sandbox through the host's engine.
    assert_eq!(env["KRILL_SANDBOX"], "container");
    let volumes: Vec<String> = worker["volumes"]
        .as_sequence()
        .expect("worker volumes")
        .iter()
        .map(s)
        .collect();
    assert!(volumes
        .iter()
        .any(|v| v.starts_with("/var/run/docker.sock:")));
    // The stub directory is mounted at the same path on both sides.
    let stub_dir = Path::new(&env["KRILL_STUB_PATH"])
        .parent()
        .expect("stub dir")
        .display()
        .to_string();
    assert!(
        volumes.contains(&format!("{stub_dir}:{stub_dir}")),
        "{file}: KRILL_STUB_PATH's directory must be mounted at the same host path: {volumes:?}"
    );
    // The metrics port is exposed, probed and scraped.
    let port = metrics_port(&env["KRILL_METRICS_ADDR"]);
    let exposed: Vec<String> = worker["expose"]
        .as_sequence()
        .expect("expose")
        .iter()
        .map(s)
        .collect();
    assert!(exposed.contains(&port.to_string()), "{file}: {exposed:?}");
    let health = format!("{:?}", worker["healthcheck"]["test"]);
    assert!(
        health.contains(worker::http::READYZ) && health.contains(&port.to_string()),
        "{file}: healthcheck {health}"
    );
    // Stopping waits for the drain.
    let stop = duration(&s(&worker["stop_grace_period"]));
    let grace = env
        .get("KRILL_SHUTDOWN_GRACE")
        .cloned()
        .unwrap_or_else(|| worker_default("KRILL_SHUTDOWN_GRACE"));
    assert!(
        stop > needed_stop_time(&grace),
        "{file}: stop_grace_period {stop:?} must exceed the grace {grace} + publish time"
    );
    assert_eq!(s(&worker["stop_signal"]), "SIGTERM");
    // Files it builds from and mounts exist.
    let dir = root().join("deploy/compose");
    let context = dir.join(s(&worker["build"]["context"]));
    let dockerfile = context.join(s(&worker["build"]["dockerfile"]));
    assert!(dockerfile.exists(), "{}", dockerfile.display());
    for service in services.values() {
        for v in service["volumes"].as_sequence().into_iter().flatten() {
            let v = s(v);
            let src = v.split(':').next().unwrap_or_default();
            if src.starts_with('.') {
                assert!(dir.join(src).exists(), "{file}: {src} does not exist");
            }
        }
    }
    // RabbitMQ gets Krill's config (consumer_timeout) and the management plugin.
    let rabbit: Vec<String> = compose["services"]["rabbitmq"]["volumes"]
        .as_sequence()
        .expect("rabbitmq volumes")
        .iter()
        .map(s)
        .collect();
    assert!(rabbit
        .iter()
        .any(|v| v.starts_with("../rabbitmq/rabbitmq.conf:/etc/rabbitmq/")));
    let plugins = read("deploy/compose/enabled_plugins");
    assert!(plugins.contains("rabbitmq_management"), "{plugins}");
    consumer_timeout_covers_the_longest_task();

    // The image: env defaults are worker settings, the exposed port is the metrics port.
    let df = std::fs::read_to_string(&dockerfile).expect("dockerfile");
    let mut exposes = Vec::new();
    let mut in_env = false;
    for line in df.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("EXPOSE ") {
            exposes.push(rest.trim().to_string());
        }
        if t.starts_with("ENV ") || in_env {
            let body = t.trim_start_matches("ENV ").trim_end_matches('\\');
            if let Some((k, v)) = body.trim().split_once('=') {
                cli.check_env("worker.Dockerfile", k.trim());
                if k.trim() == "KRILL_METRICS_ADDR" {
                    assert_eq!(metrics_port(v.trim()), port);
                }
            }
            in_env = t.ends_with('\\');
        }
    }
    assert_eq!(exposes, vec![port.to_string()], "worker.Dockerfile EXPOSE");
    assert!(df.contains("STOPSIGNAL SIGTERM"));

    // Prometheus scrapes that port and path on every replica.
    let prom = yaml("deploy/compose/prometheus.yml");
    let jobs = prom["scrape_configs"]
        .as_sequence()
        .expect("scrape_configs");
    let job = jobs
        .iter()
        .find(|j| j["job_name"] == "krill-worker")
        .expect("a krill-worker job");
    assert_eq!(s(&job["metrics_path"]), worker::http::METRICS);
    let sd = &job["dns_sd_configs"][0];
    assert_eq!(s(&sd["port"]), port.to_string());
    assert_eq!(s(&sd["names"][0]), "worker");
}

/// deploy/rabbitmq/rabbitmq.conf (used by Compose) keeps consumer_timeout above
/// the worker's longest task deadline.
fn consumer_timeout_covers_the_longest_task() {
    let conf = read("deploy/rabbitmq/rabbitmq.conf");
    let ms: u64 = conf
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == "consumer_timeout").then(|| v.trim().parse().ok())?
        })
        .expect("consumer_timeout in rabbitmq.conf");
    let max = duration(&worker_default("KRILL_MAX_TIMEOUT"));
    assert!(
        Duration::from_millis(ms) > max,
        "consumer_timeout {ms} ms is not above the maximum task timeout {max:?}"
    );
}

fn by_kind<'a>(docs: &'a [Yaml], kind: &str) -> Vec<&'a Yaml> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

/// `name -> value` of a container's env (valueFrom entries map to "").
fn k8s_env(container: &Yaml) -> HashMap<String, String> {
    container["env"]
        .as_sequence()
        .into_iter()
        .flatten()
        .map(|e| {
            let v = if e["value"].is_null() {
                String::new()
            } else {
                s(&e["value"])
            };
            (s(&e["name"]), v)
        })
        .collect()
}

#[test]
fn kubernetes_names_match_the_code() {
    let cli = worker_cli();
    let file = "deploy/k8s/worker.yaml";
    let docs = yaml_docs(file);
    let deployments = by_kind(&docs, "Deployment");
    assert_eq!(deployments.len(), 1, "{file}: one Deployment");
    let dep = deployments[0];
    let pod = &dep["spec"]["template"]["spec"];
    let containers = pod["containers"].as_sequence().expect("containers");
    let worker = containers
        .iter()
        .find(|c| c["name"] == "worker")
        .expect("a `worker` container");
    let env = k8s_env(worker);
    for k in env.keys() {
        cli.check_env(file, k);
    }
    for key in ["command", "args"] {
        let words: Vec<String> = worker[key]
            .as_sequence()
            .into_iter()
            .flatten()
            .map(s)
            .collect();
        cli.check_flags(file, &words);
    }
    // Probes: the worker's paths, on the metrics port.
    let port = metrics_port(&env["KRILL_METRICS_ADDR"]);
    let ports = worker["ports"].as_sequence().expect("ports");
    let named = ports
        .iter()
        .find(|p| s(&p["containerPort"]) == port.to_string())
        .unwrap_or_else(|| panic!("{file}: containerPort {port} not declared"));
    for (probe, path) in [
        ("livenessProbe", worker::http::HEALTHZ),
        ("readinessProbe", worker::http::READYZ),
    ] {
        let get = &worker[probe]["httpGet"];
        assert_eq!(s(&get["path"]), path, "{file}: {probe}");
        let p = s(&get["port"]);
        assert!(
            p == port.to_string() || p == s(&named["name"]),
            "{file}: {probe} port {p}"
        );
    }
    let annotations = &dep["spec"]["template"]["metadata"]["annotations"];
    assert_eq!(s(&annotations["prometheus.io/port"]), port.to_string());
    assert_eq!(s(&annotations["prometheus.io/path"]), worker::http::METRICS);
    // The pod may take as long as the drain needs.
    let grace = env
        .get("KRILL_SHUTDOWN_GRACE")
        .cloned()
        .unwrap_or_else(|| worker_default("KRILL_SHUTDOWN_GRACE"));
    let termination = Duration::from_secs(
        pod["terminationGracePeriodSeconds"]
            .as_u64()
            .expect("terminationGracePeriodSeconds"),
    );
    assert!(
        termination > needed_stop_time(&grace),
        "{file}: terminationGracePeriodSeconds {termination:?} vs grace {grace}"
    );
    // The container sandbox reaches the sidecar's engine, and the engine sees the
    // stub at the path the worker names.
    if env
        .get("KRILL_SANDBOX")
        .is_some_and(|k| k.contains("container"))
    {
        let sidecar = pod["initContainers"]
            .as_sequence()
            .into_iter()
            .flatten()
            .find(|c| c["name"] == "dind")
            .expect("a dind sidecar for the container sandbox");
        assert_eq!(sidecar["restartPolicy"], "Always", "a native sidecar");
        let socket = env["DOCKER_HOST"].trim_start_matches("unix://").to_string();
        let stub_dir = Path::new(&env["KRILL_STUB_PATH"])
            .parent()
            .expect("stub dir")
            .display()
            .to_string();
        let mounts = |c: &Yaml| -> Vec<String> {
            c["volumeMounts"]
                .as_sequence()
                .into_iter()
                .flatten()
                .map(|m| s(&m["mountPath"]))
                .collect()
        };
        for c in [worker, sidecar] {
            let m = mounts(c);
            assert!(
                m.contains(&stub_dir),
                "{file}: {} lacks {stub_dir}",
                s(&c["name"])
            );
            assert!(
                m.iter().any(|p| socket.starts_with(p.as_str())),
                "{file}: {} lacks the socket dir of {socket}",
                s(&c["name"])
            );
        }
    }

    // KEDA scales this Deployment on its pool queue, ready + unacked.
    let file = "deploy/k8s/keda.yaml";
    let keda = yaml_docs(file);
    let scaled = by_kind(&keda, "ScaledObject");
    assert_eq!(scaled.len(), 1, "{file}: one ScaledObject");
    let so = scaled[0];
    assert_eq!(
        so["spec"]["scaleTargetRef"]["name"],
        dep["metadata"]["name"]
    );
    let triggers = so["spec"]["triggers"].as_sequence().expect("triggers");
    let t = &triggers[0];
    assert_eq!(s(&t["type"]), "rabbitmq");
    let md = &t["metadata"];
    let pool = env
        .get("KRILL_POOL")
        .cloned()
        .unwrap_or_else(|| worker_default("KRILL_POOL"));
    assert_eq!(s(&md["queueName"]), broker::topology::pool_queue(&pool));
    assert_eq!(
        s(&md["protocol"]),
        "http",
        "{file}: only the management API counts unacknowledged messages"
    );
    assert_eq!(s(&md["mode"]), "QueueLength");
    let concurrency = env
        .get("KRILL_CONCURRENCY")
        .cloned()
        .unwrap_or_else(|| worker_default("KRILL_CONCURRENCY"));
    assert_eq!(s(&md["value"]), concurrency, "{file}: tasks per pod");
    let auth = s(&t["authenticationRef"]["name"]);
    assert!(
        by_kind(&keda, "TriggerAuthentication")
            .iter()
            .any(|a| s(&a["metadata"]["name"]) == auth),
        "{file}: TriggerAuthentication {auth} missing"
    );
}

/// `[Section] -> key -> values` of a systemd unit.
fn unit(text: &str) -> HashMap<String, HashMap<String, Vec<String>>> {
    let mut out: HashMap<String, HashMap<String, Vec<String>>> = HashMap::new();
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("not a unit line: {line}"));
        out.entry(section.clone())
            .or_default()
            .entry(k.trim().to_string())
            .or_default()
            .push(v.trim().to_string());
    }
    out
}

#[test]
fn systemd_names_match_the_code() {
    let cli = worker_cli();
    let file = "deploy/systemd/krill-worker.service";
    let u = unit(&read(file));
    let service = &u["Service"];
    let one = |k: &str| -> &str {
        service
            .get(k)
            .and_then(|v| v.last())
            .unwrap_or_else(|| panic!("{file}: no {k}="))
    };
    assert_eq!(one("KillSignal"), "SIGTERM");
    // The binary is the worker's.
    let exec: Vec<String> = one("ExecStart")
        .split_whitespace()
        .map(str::to_string)
        .collect();
    let bin = Path::new(&exec[0])
        .file_name()
        .expect("binary")
        .to_string_lossy()
        .into_owned();
    // The `name = "…"` lines of worker/Cargo.toml's [[bin]] sections.
    let cargo = read("worker/Cargo.toml");
    let bins: Vec<&str> = cargo
        .split("[[bin]]")
        .skip(1)
        .filter_map(|sec| {
            let line = sec.lines().find(|l| l.trim_start().starts_with("name"))?;
            Some(line.split_once('=')?.1.trim().trim_matches('"'))
        })
        .collect();
    assert!(
        bins.contains(&bin.as_str()),
        "{file}: {bin} is not one of {bins:?}"
    );
    cli.check_flags(file, &exec[1..]);
    // Env file: every KRILL_ name (set or commented out) is a worker setting.
    let env_file = "deploy/systemd/krill-worker.env";
    let mut env = HashMap::new();
    for line in read(env_file).lines() {
        let l = line.trim().trim_start_matches('#');
        if let Some((k, v)) = l.split_once('=') {
            if k.starts_with("KRILL_") && !k.contains(' ') {
                cli.check_env(env_file, k);
                if !line.trim_start().starts_with('#') {
                    env.insert(k.to_string(), v.to_string());
                }
            }
        }
    }
    assert!(one("EnvironmentFile").ends_with("worker.env"));
    for e in service.get("Environment").into_iter().flatten() {
        let k = e.trim_matches('"').split('=').next().unwrap_or_default();
        cli.check_env(file, k);
    }
    let grace = env
        .get("KRILL_SHUTDOWN_GRACE")
        .cloned()
        .unwrap_or_else(|| worker_default("KRILL_SHUTDOWN_GRACE"));
    let stop = duration(one("TimeoutStopSec"));
    assert!(
        stop > needed_stop_time(&grace),
        "{file}: TimeoutStopSec {stop:?} vs grace {grace}"
    );
    // The work dir is writable under ProtectSystem=strict.
    let work = env
        .get("KRILL_WORK_DIR")
        .cloned()
        .unwrap_or_else(|| worker_default("KRILL_WORK_DIR"));
    let rw = service.get("ReadWritePaths").cloned().unwrap_or_default();
    assert!(
        rw.iter()
            .flat_map(|l| l.split_whitespace())
            .any(|p| work.starts_with(p)),
        "{file}: {work} not in ReadWritePaths {rw:?}"
    );
    assert_eq!(
        one("Delegate"),
        "yes",
        "{file}: the sandbox needs its cgroup subtree"
    );
}

#[test]
fn grafana_dashboard_uses_metrics_the_worker_exports() {
    let file = "deploy/grafana/krill-dashboard.json";
    let dash: serde_json::Value =
        serde_json::from_str(&read(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    // Every series name the worker can expose.
    let m = worker::metrics::Metrics::new("w", "p");
    m.finished(broker::protocol::Status::Succeeded, None);
    m.ran(None, Duration::from_secs(1));
    m.queued(Duration::from_secs(1));
    m.sandbox_started(
        broker::protocol::SandboxKind::Process,
        Duration::from_secs(1),
    );
    let known: BTreeSet<String> = worker::metrics::samples(&m.encode())
        .into_iter()
        .map(|(series, _)| series.split('{').next().unwrap_or_default().to_string())
        .collect();
    let panels = dash["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    let mut used = BTreeSet::new();
    for p in panels {
        assert!(
            ids.insert(p["id"].as_u64().expect("panel id")),
            "duplicate panel id"
        );
        for t in p["targets"].as_array().into_iter().flatten() {
            let expr = t["expr"].as_str().expect("expr");
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("krill_") {
                    assert!(
                        known.contains(word),
                        "{file}: `{word}` is not a worker metric (known: {known:?})"
                    );
                    used.insert(word.to_string());
                }
            }
            if expr.contains("rabbitmq_") {
                let prefix = broker::topology::POOL_QUEUE_PREFIX.replace('.', "\\\\.");
                assert!(
                    expr.contains(&prefix),
                    "{file}: {expr} should select {prefix}"
                );
            }
        }
    }
    for core in [
        "krill_tasks_finished_total",
        "krill_task_run_seconds_bucket",
        "krill_task_queue_wait_seconds_bucket",
        "krill_tasks_running",
        "krill_slots_total",
    ] {
        assert!(used.contains(core), "{file}: no panel uses {core}");
    }
}

/// `key = value` of a rabbitmq.conf text.
fn conf_value(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        (k.trim() == key).then(|| v.trim().to_string())
    })
}

#[test]
fn rabbitmq_cluster_manifest_matches_the_broker_config() {
    let file = "deploy/k8s/rabbitmq-cluster.yaml";
    let docs = yaml_docs(file);
    let clusters = by_kind(&docs, "RabbitmqCluster");
    assert_eq!(clusters.len(), 1, "{file}: one RabbitmqCluster");
    let c = clusters[0];
    assert_eq!(s(&c["apiVersion"]), "rabbitmq.com/v1beta1", "{file}");
    let replicas = c["spec"]["replicas"].as_u64().expect("spec.replicas");
    assert!(
        replicas >= 3 && replicas % 2 == 1,
        "{file}: an odd number of nodes, at least 3 (quorum queues need a majority), got {replicas}"
    );
    // The worker's amqp-url names the operator's client Service (the resource's name).
    let name = s(&c["metadata"]["name"]);
    assert!(
        read("deploy/k8s/worker.yaml").contains(&format!("@{name}.krill.svc:5672")),
        "deploy/k8s/worker.yaml's amqp-url does not name the `{name}` service"
    );
    let extra = s(&c["spec"]["rabbitmq"]["additionalConfig"]);
    let conf = read("deploy/rabbitmq/rabbitmq.conf");
    assert_eq!(
        conf_value(&extra, "consumer_timeout"),
        conf_value(&conf, "consumer_timeout"),
        "{file}: consumer_timeout differs from deploy/rabbitmq/rabbitmq.conf"
    );
    assert_eq!(
        conf_value(&extra, "cluster_partition_handling").as_deref(),
        Some("pause_minority"),
        "{file}: a partitioned minority must pause"
    );
}

#[test]
fn compose_cluster_profile_names_every_node() {
    let file = "deploy/compose/docker-compose.cluster.yml";
    let compose = yaml(file);
    let services = compose["services"].as_mapping().expect("services");
    let nodes: BTreeSet<String> = services
        .keys()
        .map(s)
        .filter(|n| n.starts_with("rabbitmq"))
        .collect();
    assert_eq!(
        nodes.len(),
        3,
        "{file}: three RabbitMQ nodes, got {nodes:?}"
    );
    let url = s(&compose["services"]["worker"]["environment"]["KRILL_AMQP_URL"]);
    let hosts: BTreeSet<String> = broker::amqp::urls(&url)
        .iter()
        .filter_map(|u| u.split('@').nth(1)?.split(':').next().map(str::to_string))
        .collect();
    assert_eq!(
        hosts, nodes,
        "{file}: the worker's KRILL_AMQP_URL lists every node"
    );
    let conf = read("deploy/compose/cluster.conf");
    for n in &nodes {
        assert!(
            conf.contains(&format!("= rabbit@{n}\n")),
            "deploy/compose/cluster.conf does not list {n}"
        );
    }
}
