//! A network of its own, for both sandboxes: from inside a task with network,
//! the host (its loopback, its own address, the bridge gateways), the cloud
//! metadata address and another running task are refused at once; a small
//! "outside" host of the test's own (a net namespace on 198.51.100.0/24) is
//! reached only by a task granted it; a task asking more than the pool allows
//! is rejected; a task can neither take another address nor forge packets.

use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use broker::protocol::{Network, NetworkAllow, SandboxKind, Status, Task};
use krill_tests::{client, task, unique_pool, WorkerBuilder, WorkerProc};

const PYTHON_IMAGE: &str = "krill/python:1";
/// The port the outside host serves on.
const OUTSIDE_PORT: u16 = 8080;

fn sh(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect(args[0]);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A host "outside" the worker: a net namespace with a TCP server on an
/// address of 198.51.100.0/24 routed from the host; removed when dropped.
struct Outside {
    ns: String,
    host_end: String,
    addr: Ipv4Addr,
    server: Child,
}

impl Outside {
    fn start() -> Outside {
        // Tests of this binary run side by side: each outside host takes the
        // next pair of addresses (from a random start, so that two runs one
        // after the other do not meet each other's leftovers either).
        static NEXT: std::sync::OnceLock<std::sync::atomic::AtomicU32> = std::sync::OnceLock::new();
        let next = NEXT.get_or_init(|| {
            std::sync::atomic::AtomicU32::new((uuid::Uuid::new_v4().as_u128() % 120) as u32)
        });
        let n = 2 * (1 + (next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % 120) as u8);
        let (near, addr) = (
            Ipv4Addr::new(198, 51, 100, n),
            Ipv4Addr::new(198, 51, 100, n + 1),
        );
        let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
        let (ns, host_end) = (format!("krill-out-{tag}"), format!("kro{tag}"));
        sh(&["ip", "netns", "add", &ns]);
        let o = Outside {
            ns: ns.clone(),
            host_end: host_end.clone(),
            addr,
            server: Command::new("true").spawn().expect("true"),
        };
        sh(&[
            "ip", "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ]);
        sh(&[
            "ip",
            "addr",
            "add",
            &near.to_string(),
            "peer",
            &format!("{addr}/32"),
            "dev",
            &host_end,
        ]);
        sh(&["ip", "link", "set", &host_end, "up"]);
        let inside = |a: &[&str]| {
            let mut v = vec!["ip", "netns", "exec", &ns];
            v.extend_from_slice(a);
            sh(&v);
        };
        inside(&["ip", "link", "set", "lo", "up"]);
        inside(&[
            "ip",
            "addr",
            "add",
            &addr.to_string(),
            "peer",
            &format!("{near}/32"),
            "dev",
            "eth0",
        ]);
        inside(&["ip", "link", "set", "eth0", "up"]);
        inside(&["ip", "route", "add", "default", "via", &near.to_string()]);
        let server = Command::new("ip")
            .args(["netns", "exec", &ns, "python3", "-c"])
            .arg(format!(
                "import socket\ns=socket.socket()\ns.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
                 s.bind(('{addr}', {OUTSIDE_PORT}))\ns.listen(16)\n\
                 while True:\n    c,_=s.accept()\n    c.sendall(b'outside says hello\\n')\n    c.close()\n"
            ))
            .stdin(Stdio::null())
            .spawn()
            .expect("outside server");
        let mut o = o;
        o.server = server;
        // Served once the host reaches it.
        let until = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect((addr, OUTSIDE_PORT)).is_err() {
            assert!(Instant::now() < until, "the outside host never served");
            std::thread::sleep(Duration::from_millis(50));
        }
        o
    }
}

impl Drop for Outside {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = Command::new("ip")
            .args(["link", "del", &self.host_end])
            .status();
        let _ = Command::new("ip").args(["netns", "del", &self.ns]).status();
    }
}

/// The host's own address on its default route.
fn host_addr() -> Ipv4Addr {
    let s = UdpSocket::bind("0.0.0.0:0").expect("udp");
    s.connect("203.0.113.1:9").expect("route");
    match s.local_addr().expect("addr").ip() {
        std::net::IpAddr::V4(a) => a,
        other => panic!("no IPv4 route: {other}"),
    }
}

/// A python script that tries TCP to each `(name, host, port)` and prints
/// `name connected`, `name refused ERRNO` or `name timed out`.
fn probe(targets: &[(&str, String, u16)]) -> String {
    let list = targets
        .iter()
        .map(|(n, h, p)| format!("({n:?}, {h:?}, {p})"))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "python3 - <<'EOF'\nimport socket\nfor name, host, port in [{list}]:\n    try:\n        \
         s = socket.create_connection((host, port), timeout=15)\n        print(name, 'connected', \
         s.recv(64).decode().strip())\n    except socket.timeout:\n        print(name, 'timed out')\n    \
         except OSError as e:\n        print(name, 'refused', e.errno)\nEOF\n"
    )
}

fn sandboxed(mut t: Task, kind: SandboxKind) -> Task {
    t.sandbox = Some(kind);
    if kind == SandboxKind::Container {
        t.image = Some(PYTHON_IMAGE.into());
    }
    t
}

async fn worker(prefix: &str, allow: &str) -> WorkerProc {
    builder(prefix, allow).start().await
}

fn builder(prefix: &str, allow: &str) -> WorkerBuilder {
    WorkerBuilder::new(&unique_pool(prefix))
        .arg("--sandbox")
        .arg("process,container")
        .arg("--image")
        .arg(PYTHON_IMAGE)
        .arg("--allow-network")
        .arg("--network-allow")
        .arg(allow)
        .arg("--concurrency")
        .arg("4")
}

/// The address of a running task's network once it listens on port 7000
/// (read from one of its processes).
async fn task_address(id: &str) -> Ipv4Addr {
    let needle = format!("KRILL_TASK_ID={id}");
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        for e in std::fs::read_dir("/proc").expect("proc").flatten() {
            let env = std::fs::read(e.path().join("environ")).unwrap_or_default();
            if !env.split(|b| *b == 0).any(|v| v == needle.as_bytes()) {
                continue;
            }
            let pid = e.file_name().to_string_lossy().into_owned();
            // Listening on 7000 (0x1B58) in its own net namespace.
            let tcp = std::fs::read_to_string(e.path().join("net/tcp")).unwrap_or_default();
            if !tcp
                .lines()
                .any(|l| l.contains(":1B58 ") && l.contains(" 0A "))
            {
                continue;
            }
            let out = Command::new("nsenter")
                .args([
                    "-t", &pid, "-n", "ip", "-4", "-o", "addr", "show", "dev", "eth0",
                ])
                .output()
                .expect("nsenter");
            let text = String::from_utf8_lossy(&out.stdout);
            if let Some(a) = text
                .split_whitespace()
                .skip_while(|w| *w != "inet")
                .nth(1)
                .and_then(|a| a.split('/').next())
                .and_then(|a| a.parse().ok())
            {
                return a;
            }
        }
        assert!(Instant::now() < until, "task {id} never showed its address");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Everything of the host's, the metadata address and another task are
/// refused at once (reset or unreachable, never a silent drop), in both sandboxes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_metadata_and_other_tasks_are_refused_quickly() {
    let w = worker("net-refused", "198.51.100.0/24").await;
    let c = client().await;
    let listener = TcpListener::bind("0.0.0.0:0").expect("listen");
    let port = listener.local_addr().expect("port").port();
    let broker_port: u16 = krill_tests::amqp_url()
        .rsplit(':')
        .next()
        .and_then(|p| p.split('/').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or(5672);
    for kind in [SandboxKind::Process, SandboxKind::Container] {
        // Another task with network, listening, until the probe is done.
        let mut other = sandboxed(
            task("python3 -c 'import socket,time\ns=socket.socket()\ns.bind((\"0.0.0.0\", 7000))\ns.listen(4)\ntime.sleep(120)'"),
            kind,
        );
        other.limits.network = true.into();
        other.limits.timeout_secs = Some(120);
        c.submit(&w.pool, &other).await.expect("submit");
        let other_addr = task_address(&other.id).await;
        let targets = [
            ("loopback-broker", "127.0.0.1".to_string(), broker_port),
            ("host-address", host_addr().to_string(), port),
            ("host-broker", host_addr().to_string(), broker_port),
            ("metadata", "169.254.169.254".to_string(), 80),
            ("docker0-gateway", "172.17.0.1".to_string(), port),
            ("krill-gateway", "10.213.0.1".to_string(), port),
            ("other-task", other_addr.to_string(), 7000),
        ];
        let mut t = sandboxed(task(&probe(&targets)), kind);
        t.limits.network = true.into();
        let r = krill_tests::run_task(&c, &w.pool, &t).await;
        assert_eq!(r.status, Status::Succeeded, "{kind}: {r:?}");
        eprintln!("{kind}:\n{}", r.stdout);
        for (name, _, _) in &targets {
            let line = r
                .stdout
                .lines()
                .find(|l| l.starts_with(&format!("{name} ")))
                .unwrap_or_else(|| panic!("{kind}: no line for {name}: {r:?}"));
            assert!(
                line.contains(" refused "),
                "{kind}: {line} (all: {})",
                r.stdout
            );
        }
        assert_eq!(r.network.as_ref().map(|n| n.allow.len()), Some(1), "{r:?}");
        c.cancel(&other.id).await.expect("cancel");
        let _ = c.wait(&other.id, Some(Duration::from_secs(60))).await;
    }
    drop(listener);
}

/// Every node of the worker's broker list is refused to its tasks, even one
/// in a range the pool and the task grant: the "outside" host stands in for a
/// second node (`--amqp-url` lists it after the real one, which answers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_of_the_broker_list_is_refused_even_when_granted() {
    let outside = Outside::start();
    let grant = format!("{}:{OUTSIDE_PORT}", outside.addr);
    let list = format!(
        "{},amqp://guest:guest@{}:{OUTSIDE_PORT}/%2f",
        krill_tests::amqp_url(),
        outside.addr
    );
    let w = builder("net-nodes", &grant)
        .env("KRILL_AMQP_URL", &list)
        .start()
        .await;
    let c = client().await;
    let target = [("second-node", outside.addr.to_string(), OUTSIDE_PORT)];
    for kind in [SandboxKind::Process, SandboxKind::Container] {
        let mut t = sandboxed(task(&probe(&target)), kind);
        t.limits.network = Network::Allow(NetworkAllow {
            allow: vec![grant.clone()],
        });
        let r = krill_tests::run_task(&c, &w.pool, &t).await;
        assert_eq!(r.status, Status::Succeeded, "{kind}: {r:?}");
        assert!(
            r.stdout.starts_with("second-node refused "),
            "{kind}: {r:?}"
        );
    }
}

/// What a task would need to pass for another (its address, its MAC, packets
/// it makes by hand) or to see others' traffic: each attempt fails inside the
/// task's own namespace, in both sandboxes — raw and packet sockets, binding to
/// an address not its own (IP_TRANSPARENT), adding an address over netlink
/// (RTM_NEWADDR) and changing its MAC (SIOCSIFHWADDR).
const FORGE: &str = r#"import socket, struct, fcntl
def attempt(name, f):
    try:
        f()
        print(name, "allowed")
    except OSError as e:
        print(name, "refused", e.errno)
def raw():
    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
def packet():
    socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
def transparent():
    s = socket.socket()
    s.setsockopt(socket.SOL_IP, 19, 1)  # IP_TRANSPARENT: bind to an address not ours
def new_addr():
    # RTM_NEWADDR for 10.213.250.250/16 on eth0, over NETLINK_ROUTE.
    idx = socket.if_nametoindex("eth0")
    s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0)
    a = socket.inet_aton("10.213.250.250")
    attrs = struct.pack("HH4s", 8, 2, a) + struct.pack("HH4s", 8, 1, a)
    body = struct.pack("BBBBI", socket.AF_INET, 16, 0, 0, idx) + attrs
    s.send(struct.pack("IHHII", 16 + len(body), 20, 0x1 | 0x4 | 0x400 | 0x200, 1, 0) + body)
    err = struct.unpack("i", s.recv(4096)[16:20])[0]
    if err:
        raise OSError(-err, "RTM_NEWADDR")
def set_mac():
    s = socket.socket()
    req = struct.pack("16sH6s8x", b"eth0", 1, b"\x02\x00\x00\x00\x00\x01")
    fcntl.ioctl(s, 0x8924, req)  # SIOCSIFHWADDR
for name, f in [("raw", raw), ("packet", packet), ("transparent", transparent), ("new-address", new_addr), ("set-mac", set_mac)]:
    attempt(name, f)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_cannot_take_another_address_or_forge_packets() {
    let w = worker("net-forge", "198.51.100.0/24").await;
    let c = client().await;
    let names = ["raw", "packet", "transparent", "new-address", "set-mac"];
    for kind in [SandboxKind::Process, SandboxKind::Container] {
        let mut t = sandboxed(task(&format!("python3 - <<'EOF'\n{FORGE}EOF\n")), kind);
        t.limits.network = true.into();
        let r = krill_tests::run_task(&c, &w.pool, &t).await;
        assert_eq!(r.status, Status::Succeeded, "{kind}: {r:?}");
        eprintln!("{kind}:\n{}", r.stdout);
        for name in names {
            let line = r
                .stdout
                .lines()
                .find(|l| l.starts_with(&format!("{name} ")))
                .unwrap_or_else(|| panic!("{kind}: no line for {name}: {r:?}"));
            assert!(
                line.contains(" refused "),
                "{kind}: {line} (all: {})",
                r.stdout
            );
        }
    }
}

/// The outside host is reached by a task granted it, not by one without the
/// grant; a task asking beyond --network-allow is rejected, saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_granted_task_reaches_the_outside_host() {
    let outside = Outside::start();
    let w = worker("net-allowed", &format!("{}:{OUTSIDE_PORT}", outside.addr)).await;
    let c = client().await;
    let target = [("outside", outside.addr.to_string(), OUTSIDE_PORT)];
    let allow = |a: &str| {
        Network::Allow(NetworkAllow {
            allow: vec![a.to_string()],
        })
    };
    for kind in [SandboxKind::Process, SandboxKind::Container] {
        // Its own grant.
        let mut t = sandboxed(task(&probe(&target)), kind);
        t.limits.network = allow(&format!("{}:{OUTSIDE_PORT}", outside.addr));
        let r = krill_tests::run_task(&c, &w.pool, &t).await;
        assert_eq!(r.status, Status::Succeeded, "{kind}: {r:?}");
        assert_eq!(
            r.stdout, "outside connected outside says hello\n",
            "{kind}: {r:?}"
        );
        let echoed = r.network.expect("the policy is echoed").allow;
        assert_eq!(echoed, vec![format!("{}/32:{OUTSIDE_PORT}", outside.addr)]);
        // `true`: the pool's whole allowance.
        let mut t = sandboxed(task(&probe(&target)), kind);
        t.limits.network = true.into();
        let r = krill_tests::run_task(&c, &w.pool, &t).await;
        assert!(r.stdout.contains("outside connected"), "{kind}: {r:?}");
        // Network, but another grant: the outside host is refused.
        let mut t = sandboxed(task(&probe(&target)), kind);
        t.limits.network = Network::Allow(NetworkAllow { allow: vec![] });
        let r = krill_tests::run_task(&c, &w.pool, &t).await;
        assert_eq!(r.status, Status::Succeeded, "{kind}: {r:?}");
        assert!(r.stdout.starts_with("outside refused "), "{kind}: {r:?}");
        // More than the pool allows.
        let mut t = sandboxed(task("echo never"), kind);
        t.limits.network = allow("198.51.100.0/24");
        let r = krill_tests::run_task(&c, &w.pool, &t).await;
        assert_eq!(r.status, Status::Rejected, "{kind}: {r:?}");
        let e = r.error.unwrap_or_default();
        assert!(
            e.contains("198.51.100.0/24") && e.contains("--network-allow"),
            "{e}"
        );
    }
    // Nothing of a finished task's network is left: its grant is taken out
    // of nft (a chain per task address) once its sandbox is gone.
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let chains = Command::new("nft")
            .args(["list", "table", "inet", "krill"])
            .output()
            .expect("nft");
        let text = String::from_utf8_lossy(&chains.stdout).into_owned();
        if !names_outside_refused(&text, outside.addr) {
            break;
        }
        assert!(
            Instant::now() < until,
            "a finished task's grant is still in nft:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(w);
    drop(outside);
}

/// Whether nft's listing names `addr` anywhere but in the always-refused set
/// (which other tests of this binary grow with addresses of 198.51.100.0/24 of
/// their own, and which is never shrunk): as a whole address, not a prefix of
/// another (198.51.100.5 is not 198.51.100.51).
fn names_outside_refused(listing: &str, addr: Ipv4Addr) -> bool {
    let mut rest = listing.to_string();
    if let Some(start) = rest.find("set refused4 {") {
        let end = rest[start..]
            .find("\n\t}")
            .map_or(rest.len(), |e| start + e + 3);
        rest.replace_range(start..end, "");
    }
    let addr = addr.to_string();
    rest.split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .any(|word| word == addr)
}

#[test]
fn an_address_is_found_whole_and_outside_the_refused_set() {
    let listing = "table inet krill {\n\tset refused4 {\n\t\telements = { 198.51.100.7, 198.51.100.51 }\n\t}\n\tchain g {\n\t\tip daddr 198.51.100.9/32 tcp dport 80 accept\n\t}\n}\n";
    let a = |s: &str| s.parse::<Ipv4Addr>().expect("addr");
    assert!(names_outside_refused(listing, a("198.51.100.9")));
    assert!(!names_outside_refused(listing, a("198.51.100.7")));
    assert!(!names_outside_refused(listing, a("198.51.100.5")));
    assert!(!names_outside_refused(listing, a("198.51.100.90")));
}

/// What a task's network is made of on the host: a veth on the bridge whose
/// name carries the address (process tasks), a grant chain in nft.
fn leftovers(addr: Ipv4Addr) -> Vec<String> {
    let hex = format!("{:08x}", u32::from(addr));
    let mut found = Vec::new();
    let links = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .expect("ip");
    for l in String::from_utf8_lossy(&links.stdout).lines() {
        if l.contains(&format!("kv{hex}")) {
            found.push(format!("veth: {l}"));
        }
    }
    let nft = Command::new("nft")
        .args(["list", "chains", "inet"])
        .output()
        .expect("nft");
    if String::from_utf8_lossy(&nft.stdout).contains(&format!("t_{hex}")) {
        found.push(format!("nft chain t_{hex}"));
    }
    found
}

/// A SIGKILLed worker's running tasks with network leave nothing once a
/// successor has started: the veth went with the task's net namespace, the
/// container with its sweep, the grant with the successor's network sweep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_workers_task_networks_are_gone_after_a_successor_starts() {
    let b = builder("net-crash", "198.51.100.0/24");
    let mut w = b.clone().start().await;
    let c = client().await;
    let mut addrs = Vec::new();
    for kind in [SandboxKind::Process, SandboxKind::Container] {
        let mut t = sandboxed(
            task("python3 -c 'import socket,time\ns=socket.socket()\ns.bind((\"0.0.0.0\", 7000))\ns.listen(4)\ntime.sleep(300)'"),
            kind,
        );
        t.limits.network = Network::Allow(NetworkAllow {
            allow: vec!["198.51.100.0/24".into()],
        });
        t.limits.timeout_secs = Some(300);
        c.submit(&w.pool, &t).await.expect("submit");
        let addr = task_address(&t.id).await;
        assert!(
            !leftovers(addr).is_empty(),
            "{kind}: nothing of its network seen while it runs"
        );
        addrs.push((kind, addr));
    }
    w.kill();
    // Another pool's worker on the host: a successor, with no task submitted.
    let _successor = builder("net-crash-next", "198.51.100.0/24").start().await;
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        let left: Vec<String> = addrs
            .iter()
            .flat_map(|(kind, a)| {
                leftovers(*a)
                    .into_iter()
                    .map(move |l| format!("{kind}: {l}"))
            })
            .collect();
        if left.is_empty() {
            break;
        }
        assert!(Instant::now() < until, "left after 60 s: {left:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Workers started together on a host where their Docker network does not
/// exist yet all start: one makes it, the others find it (the engine refuses
/// their creates with "Pool overlaps" a moment before it answers by name).
/// A network of the test's own (name, bridge, subnet); the default one is
/// made first by an ordinary worker, so that Krill's nft table is the usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_started_together_make_their_docker_network_once() {
    /// Removes the test's networks (an earlier run's too: one left behind
    /// holds the subnet, and every create would then overlap it).
    struct Sweep;
    impl Drop for Sweep {
        fn drop(&mut self) {
            let names = Command::new("docker")
                .args(["network", "ls", "--format", "{{.Name}}"])
                .output()
                .expect("docker network ls");
            for n in String::from_utf8_lossy(&names.stdout).lines() {
                if n.starts_with("krill-race-") {
                    let _ = Command::new("docker").args(["network", "rm", n]).output();
                }
            }
        }
    }
    drop(Sweep);
    let _sweep = Sweep;
    let _usual = worker("net-race-usual", "198.51.100.0/24").await;
    let tag = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let (name, bridge) = (format!("krill-race-{tag}"), format!("krr{tag}"));
    let starts = (0..3).map(|_| {
        builder("net-race", "198.51.100.0/24")
            .arg("--docker-network")
            .arg(&name)
            .arg("--network-bridge")
            .arg(&bridge)
            .arg("--network-subnet")
            .arg("10.215.0.0/16")
            .start()
    });
    // `start` panics with the worker's log if one exits early.
    let workers = futures_util::future::join_all(starts).await;
    let listed = Command::new("docker")
        .args(["network", "ls", "--filter", &format!("name=^{name}$"), "-q"])
        .output()
        .expect("docker network ls");
    let ids = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert_eq!(ids.lines().count(), 1, "networks named {name}: {ids:?}");
    // A host with two worker bridges filters both: from a task on the second
    // bridge, the host (its own address, its gateway on that bridge, the
    // broker's port) is refused as from the first.
    let c = client().await;
    let listener = TcpListener::bind("0.0.0.0:0").expect("listen");
    let port = listener.local_addr().expect("port").port();
    let targets = [
        ("host-address", host_addr().to_string(), port),
        ("host-broker", host_addr().to_string(), 5672),
        ("own-gateway", "10.215.0.1".to_string(), port),
    ];
    for kind in [SandboxKind::Process, SandboxKind::Container] {
        let mut t = sandboxed(task(&probe(&targets)), kind);
        t.limits.network = true.into();
        let r = krill_tests::run_task(&c, &workers[0].pool, &t).await;
        assert_eq!(r.status, Status::Succeeded, "{kind}: {r:?}");
        for (target, _, _) in &targets {
            assert!(
                r.stdout.contains(&format!("{target} refused")),
                "{kind}: {target} not refused from the second bridge:\n{}",
                r.stdout
            );
        }
    }
    drop(listener);
    drop(workers);
}
