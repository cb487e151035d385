//! A network of its own for every task with network, in both sandboxes: an
//! address on the worker bridge (a Docker network Krill manages, `krill` on
//! bridge `krill0` by default), held to the egress policy of Krill's own
//! nftables tables ([`nft`]).
//!
//! ```text
//! Net::setup (once, at start)  Docker network `krill` (made if missing) + nft tables
//! Net::lease (per task)        an address of the subnet, locked host-wide
//!                              (flock in /run/krill/net) + its grant in nft
//!   ├─ container: created with that address on the `krill` network
//!   └─ process:   Net::attach: a veth pair, one end in the helper's net namespace
//! Lease::drop                  the grant is taken away, the lock freed
//! ```
//! A veth lives as long as the task's net namespace; a dead worker's locks
//! free themselves, and the next lease of the address (or the next worker's
//! sweep) flushes what its grant left in nft.

pub mod nft;
pub mod policy;

use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use bollard::models::{Ipam, IpamConfig, NetworkCreateRequest};
use bollard::Docker;
use ipnet::{IpNet, Ipv4Net};
use nix::fcntl::{Flock, FlockArg};

pub use policy::{grant, Allowance, GrantError};

/// Where task address locks live (host-wide, like the uid locks).
pub const LOCK_DIR: &str = "/run/krill/net";
/// Default Docker network, bridge and subnet.
pub const DEFAULT_DOCKER_NETWORK: &str = "krill";
pub const DEFAULT_BRIDGE: &str = "krill0";
pub const DEFAULT_SUBNET: &str = "10.213.0.0/16";
/// Addresses below this offset in the subnet are Docker's own (gateway,
/// containers connected by hand); tasks get the ones above.
const FIRST_TASK_OFFSET: u32 = 256;

/// The worker network's settings (from the worker's flags).
#[derive(Debug, Clone)]
pub struct NetConfig {
    pub docker_network: String,
    pub bridge: String,
    pub subnet: Ipv4Net,
    /// Always refused besides the fixed ranges: the broker's addresses.
    pub refused: Vec<IpNet>,
    /// Resolvers every task with network may reach on port 53.
    pub dns: Vec<Ipv4Addr>,
    pub lock_dir: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("docker network `{name}`: {source}")]
    Docker {
        name: String,
        #[source]
        source: bollard::errors::Error,
    },
    #[error("docker network `{name}` exists with subnet {found}, not {want} (remove it or pass --network-subnet {found})")]
    Subnet {
        name: String,
        found: String,
        want: Ipv4Net,
    },
    #[error("`{cmd}` failed: {why}")]
    Command { cmd: String, why: String },
    #[error("bridge `{0}` of the worker network is not in this worker's net namespace: run the worker in the engine's (host networking, or a pod shared with its engine)")]
    ElsewhereBridge(String),
    #[error("no free task address in {0}")]
    Exhausted(Ipv4Net),
    #[error("task address lock: {0}")]
    Io(#[from] std::io::Error),
}

/// The worker network, set up.
#[derive(Debug)]
pub struct Net {
    pub cfg: NetConfig,
    pub gateway: Ipv4Addr,
}

impl Net {
    /// Makes the Docker network if missing, writes Krill's nft table (adding
    /// this worker's bridge and refused addresses to the host's), and sweeps
    /// stale grants.
    pub async fn setup(cfg: NetConfig) -> Result<Arc<Net>, NetError> {
        let docker_err = |source| NetError::Docker {
            name: cfg.docker_network.clone(),
            source,
        };
        let docker = Docker::connect_with_defaults().map_err(docker_err)?;
        ensure_network(&docker, &cfg).await?;
        // The rules below hold only in this worker's net namespace: the
        // engine's bridge must be in it (not so for a worker in a container
        // of its own talking to the host's engine).
        if !Path::new("/sys/class/net").join(&cfg.bridge).exists() {
            return Err(NetError::ElsewhereBridge(cfg.bridge.clone()));
        }
        std::fs::create_dir_all(&cfg.lock_dir)?;
        // Root's only, like the uid and worker locks.
        std::fs::set_permissions(
            &cfg.lock_dir,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )?;
        bridged_through_nft()?;
        nft_script(&nft::ensure(&cfg.bridge, cfg.subnet, &cfg.refused)).await?;
        let net = Arc::new(Net {
            gateway: nft::gateway(cfg.subnet),
            cfg,
        });
        net.sweep().await;
        Ok(net)
    }

    /// Takes the grants of addresses no live worker holds (a dead worker's)
    /// out of nft; at start and with every periodic reap. Returns how many.
    pub async fn sweep(&self) -> usize {
        let Ok(listing) = nft(&["list", "table", "inet", nft::TABLE]).await else {
            return 0;
        };
        let addrs: std::collections::BTreeSet<Ipv4Addr> = listing
            .split_whitespace()
            .filter_map(nft::chain_addr)
            .collect();
        let mut swept = 0;
        for addr in addrs {
            // Held while the grant goes: no lease takes the address meanwhile.
            let Ok(Ok(lock)) = try_lock(&self.cfg.lock_dir, addr) else {
                continue;
            };
            match nft_script(&nft::revoke(addr)).await {
                Ok(_) => swept += 1,
                // Its lease took it back between the listing and the lock.
                Err(e) => tracing::debug!(%addr, error = %e, "stale grant already gone"),
            }
            drop(lock);
        }
        if swept > 0 {
            tracing::info!(swept, "stale task network grants removed");
        }
        swept
    }

    /// An address for a task and its grant (the pool's resolvers included).
    pub async fn lease(&self, grant: &[Allowance]) -> Result<Lease, NetError> {
        let started = Instant::now();
        let (addr, lock) = self.free_address()?;
        let mut all = grant.to_vec();
        all.extend(self.cfg.dns.iter().map(|d| Allowance {
            net: IpNet::from(IpAddr::V4(*d)),
            ports: vec![(53, 53)],
        }));
        nft_script(&nft::grant(addr, &all)).await?;
        tracing::debug!(%addr, took = ?started.elapsed(), "task address leased");
        Ok(Lease {
            addr,
            lock: Some(lock),
        })
    }

    fn free_address(&self) -> Result<(Ipv4Addr, Flock<File>), NetError> {
        let base = u32::from(self.cfg.subnet.network());
        let last = u32::from(self.cfg.subnet.broadcast());
        for a in base.saturating_add(FIRST_TASK_OFFSET)..last {
            let addr = Ipv4Addr::from(a);
            if let Ok(lock) = try_lock(&self.cfg.lock_dir, addr)? {
                return Ok((addr, lock));
            }
        }
        Err(NetError::Exhausted(self.cfg.subnet))
    }

    /// Joins a process task's net namespace (that of `pid`) to the bridge:
    /// a veth pair, `eth0` inside with the lease's address and a default route.
    pub async fn attach(&self, lease: &Lease, pid: u32) -> Result<(), NetError> {
        let started = Instant::now();
        // Unique: the veth of an earlier task on this address may outlive its
        // net namespace for a moment.
        let host_end = format!(
            "kv{:08x}{:04x}",
            u32::from(lease.addr),
            uuid::Uuid::new_v4().as_u128() as u16
        );
        let prefix = self.cfg.subnet.prefix_len();
        run(
            "ip",
            &[
                "link",
                "add",
                &host_end,
                "master",
                &self.cfg.bridge,
                "up",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &pid.to_string(),
            ],
            None,
        )
        .await?;
        let inside = format!(
            "addr add {}/{prefix} dev eth0\nlink set eth0 up\nroute add default via {}\n",
            lease.addr, self.gateway
        );
        let ns = format!("--net=/proc/{pid}/ns/net");
        run("nsenter", &[&ns, "ip", "-b", "-"], Some(&inside)).await?;
        tracing::debug!(addr = %lease.addr, took = ?started.elapsed(), "task net namespace joined");
        Ok(())
    }
}

/// A task's address and grant; taken back when dropped.
#[derive(Debug)]
pub struct Lease {
    pub addr: Ipv4Addr,
    lock: Option<Flock<File>>,
}

impl Drop for Lease {
    fn drop(&mut self) {
        let addr = self.addr;
        let lock = self.lock.take();
        let revoke = async move {
            if let Err(e) = nft_script(&nft::revoke(addr)).await {
                tracing::warn!(%addr, error = %e, "could not take a task's network grant back");
            }
            // Only once its grant is gone may the address serve another task.
            drop(lock);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => {
                h.spawn(revoke);
            }
            Err(_) => tracing::warn!(%addr, "no runtime to take a task's network grant back"),
        }
    }
}

fn try_lock(dir: &Path, addr: Ipv4Addr) -> Result<Result<Flock<File>, ()>, NetError> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(format!("{addr}.lock")))?;
    Ok(Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|_| ()))
}

async fn ensure_network(docker: &Docker, cfg: &NetConfig) -> Result<(), NetError> {
    let name = cfg.docker_network.clone();
    let err = |source| NetError::Docker {
        name: name.clone(),
        source,
    };
    let subnet_of = |n: &bollard::models::NetworkInspect| {
        n.ipam
            .as_ref()
            .and_then(|i| i.config.as_ref())
            .and_then(|c| c.first())
            .and_then(|c| c.subnet.clone())
            .unwrap_or_default()
    };
    if let Ok(n) = docker.inspect_network(&name, None).await {
        let found = subnet_of(&n);
        if found != cfg.subnet.to_string() {
            return Err(NetError::Subnet {
                name,
                found,
                want: cfg.subnet,
            });
        }
        return Ok(());
    }
    let docker_range = Ipv4Net::new(cfg.subnet.network(), 24)
        .map(|n| n.to_string())
        .unwrap_or_default();
    let req = NetworkCreateRequest {
        name: name.clone(),
        driver: Some("bridge".into()),
        ipam: Some(Ipam {
            config: Some(vec![IpamConfig {
                subnet: Some(cfg.subnet.to_string()),
                ip_range: Some(docker_range),
                gateway: Some(nft::gateway(cfg.subnet).to_string()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        options: Some(
            [(
                "com.docker.network.bridge.name".to_string(),
                cfg.bridge.clone(),
            )]
            .into(),
        ),
        labels: Some([("krill.managed".to_string(), "true".to_string())].into()),
        ..Default::default()
    };
    let Err(e) = docker.create_network(req).await else {
        return Ok(());
    };
    // Another worker is making it meanwhile: the engine refuses the second
    // create ("Pool overlaps") as soon as the first has taken the address
    // pool, a moment before the network answers by name (seen when several
    // workers start together).
    for _ in 0..20 {
        if docker.inspect_network(&name, None).await.is_ok() {
            tracing::debug!(error = %e, "the docker network was made by another worker");
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    Err(err(e))
}

/// Task-to-task traffic is bridged, not routed: br_netfilter hands it to the
/// inet forward hook only with `bridge-nf-call-iptables` on (Docker turns it
/// on too). Turned on when off, else the worker would not start.
fn bridged_through_nft() -> Result<(), NetError> {
    const KNOB: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";
    let fail = |why: String| NetError::Command {
        cmd: format!("echo 1 > {KNOB}"),
        why: format!("{why} (tasks on the bridge could reach each other; load br_netfilter)"),
    };
    match std::fs::read_to_string(KNOB) {
        Ok(v) if v.trim() == "1" => Ok(()),
        Ok(_) => {
            tracing::warn!("turning on {KNOB}: bridged traffic between tasks must pass nft");
            std::fs::write(KNOB, "1").map_err(|e| fail(e.to_string()))
        }
        Err(e) => Err(fail(e.to_string())),
    }
}

/// `nft -f -` with `script` (atomic: all or nothing).
async fn nft_script(script: &str) -> Result<String, NetError> {
    run("nft", &["-f", "-"], Some(script)).await
}

async fn nft(args: &[&str]) -> Result<String, NetError> {
    run("nft", args, None).await
}

async fn run(cmd: &str, args: &[&str], stdin: Option<&str>) -> Result<String, NetError> {
    use tokio::io::AsyncWriteExt as _;
    let fail = |why: String| NetError::Command {
        cmd: format!("{cmd} {}", args.join(" ")),
        why,
    };
    let mut child = tokio::process::Command::new(cmd)
        .args(args)
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            fail(format!(
                "cannot start it: {e} (install nftables and iproute2)"
            ))
        })?;
    if let (Some(text), Some(mut w)) = (stdin, child.stdin.take()) {
        w.write_all(text.as_bytes())
            .await
            .map_err(|e| fail(e.to_string()))?;
    }
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| fail(e.to_string()))?;
    if !out.status.success() {
        return Err(fail(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The host's resolvers a task may use: those in `/etc/resolv.conf` that are
/// not loopback (a loopback resolver is the host's own and never reached).
pub fn host_resolvers() -> Vec<Ipv4Addr> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|a| a.trim().parse::<Ipv4Addr>().ok())
        .filter(|a| !a.is_loopback())
        .collect()
}
