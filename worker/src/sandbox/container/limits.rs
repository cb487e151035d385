//! Every Docker limit and isolation setting of a task container, in one place.
//!
//! [`create_body`] is the only place a task container's configuration is
//! written; [`host_config`] holds every limit. What is and is not limited:
//!
//! - network: `none` (loopback only) unless the task asks and the pool allows,
//!   then [`Tuning::network`](super::Tuning::network);
//! - root filesystem read-only; writable: `/work` (the script's cwd and `HOME`;
//!   exec allowed, so scripts can build and run things there), `/tmp` (noexec),
//!   `/dev/shm`, and a tmpfs over every `VOLUME` the image declares (so no
//!   host-disk volume is ever created). Each is a tmpfs of `disk_bytes`; tmpfs
//!   pages count towards the memory limit too. Each is owned by the task user: a
//!   tmpfs over a directory that exists in the image takes that directory's mode
//!   (Docker copies it up), so `mode=` alone would leave a root-owned 0755 `/tmp`
//!   unwritable, and `/work` may be 0755 rather than 0700 (harmless: the task
//!   user is the only user);
//! - the output dir (`/.krill/out`: the script file and the two output files) is
//!   a tmpfs owned by the stub's user, group the task's gid, `02710`: the script
//!   can read the script and write the output files the stub creates there
//!   (`0644`, `0660`), never create, rename, replace or link an entry;
//! - users: docker-init and krill-stub run as [`stub_user`] with only
//!   [`STUB_CAPS`] (to drop to the task user, and to end the task's processes);
//!   the script runs as the task user (its own uid, see [`super::uids`] — or
//!   the image's own non-root numeric user, else `65534:65534`), with no
//!   capability (the stub drops to it between fork and exec: `setgroups([])`,
//!   `setgid`, `setuid`, checked); `no-new-privileges`; not privileged. So the
//!   script cannot open the attach stream through `/proc/1/fd` or
//!   `/proc/<stub>/fd`, signal, ptrace or re-limit either; Krill's
//!   seccomp allow-list ([`crate::sandbox::seccomp`]), not the engine's default
//!   profile (`AF_NETLINK` route sockets only with network);
//! - memory = memory + swap = `memory_bytes` (no swap); the kernel OOM-kills
//!   inside the container when it is exceeded; `oom_score_adj` 1000 so that, under
//!   host memory pressure, task processes die before the worker, and `/proc`
//!   read-only so that no process can lower it (`oom_score_adj_min` is only
//!   pinned where the engine holds `CAP_SYS_RESOURCE`); the same keeps the
//!   audit login uid from being set;
//! - cpu: `nano_cpus` from `cpus`; pids: `pids` + [`PIDS_OVERHEAD`] (docker-init
//!   and the stub); open files: [`Tuning::nofile`](super::Tuning::nofile);
//!   no core dumps;
//! - private IPC, cgroup and (Docker's default) PID/UTS namespaces; `init: true`
//!   so docker-init reaps orphans;
//! - only host path: the stub, bind-mounted read-only;
//! - no log driver (output is streamed over attach; Docker keeps no log file a
//!   chatty task could grow); not auto-removed (the worker removes it).
//!
//! Not limited: disk I/O bandwidth, network bandwidth when network is on. The
//! kernel attack surface is what the allow-list leaves; a runtime such as
//! gVisor ([`Tuning::runtime`](super::Tuning::runtime) `runsc`) puts a user-space
//! kernel in front of it.

use std::collections::HashMap;

use bollard::models::{
    ContainerCreateBody, EndpointIpamConfig, EndpointSettings, HostConfig,
    HostConfigCgroupnsModeEnum, HostConfigLogConfig, Mount, MountBindOptions,
    MountBindOptionsPropagationEnum, MountType, NetworkingConfig, ResourcesUlimits,
};

use super::scratch::Scratch;
use super::settings::{ImageFacts, Settings, OUTPUT_DIR, STUB_TARGET, TMP_DIR, WORK_DIR};

/// The container's shared memory (a directory of the scratch, with one).
const SHM_DIR: &str = "/dev/shm";
use crate::sandbox::Spec;

/// Processes in a task container besides the script's: docker-init and krill-stub.
pub const PIDS_OVERHEAD: u64 = 2;
/// The only capabilities of a task container, held by docker-init and the
/// stub (uid 0) and lost by the script when the stub drops to its user:
/// `SETUID`/`SETGID` to drop, `KILL` to signal the script's processes.
pub const STUB_CAPS: &[&str] = &["SETUID", "SETGID", "KILL"];
/// Room in the output dir for the script file (the largest request the stub
/// takes), besides the two output files.
const SCRIPT_ROOM: u64 = stub::MAX_REQUEST_BYTES as u64;
/// `/proc` read-only (so no process lowers its `oom_score_adj`), besides
/// Docker's default read-only paths (which this list replaces).
pub const READONLY_PATHS: &[&str] = &[
    "/proc",
    "/proc/bus",
    "/proc/fs",
    "/proc/irq",
    "/proc/sys",
    "/proc/sysrq-trigger",
];

/// The uid and gid docker-init and krill-stub run as: another user than any
/// script, so the script cannot reach their descriptors (the worker's attach
/// stream) through `/proc`, nor signal or ptrace them. Root, because only
/// root can drop to another uid in a container (Docker gives a non-root user
/// no capabilities), with nothing but [`STUB_CAPS`]. The script's own uid is
/// the slot's (from the uid allocator, [`crate::sandbox::uids`]) or the
/// image's: never 0, so this stays apart from all of them.
pub fn stub_user() -> (u32, u32) {
    (0, 0)
}

/// Docker refuses memory limits below this; smaller values are raised to it.
pub const MIN_MEMORY_BYTES: u64 = 6 * 1024 * 1024;
/// Smallest cpu share, in cpus; smaller or invalid values are raised to it.
pub const MIN_CPUS: f64 = 0.01;
/// Smallest tmpfs; a size of 0 would mean "unlimited" to the kernel.
const MIN_TMPFS_BYTES: u64 = 64 * 1024;

/// Label on every container Krill creates.
pub const LABEL_MANAGED: &str = "krill.managed";
/// Label with the task id.
pub const LABEL_TASK: &str = "krill.task";
/// Label with the worker id.
pub const LABEL_WORKER: &str = "krill.worker";
/// Label with the id of the set of workers that share the creating worker's
/// lock directory ([`crate::liveness`]): within it, a worker's liveness is its lock.
pub const LABEL_HOST: &str = "krill.host";

/// The whole create request for one task container.
pub(super) fn create_body(
    cfg: &Settings,
    spec: &Spec,
    image: &str,
    facts: &ImageFacts,
    scratch: Option<&Scratch>,
    addr: Option<std::net::Ipv4Addr>,
) -> ContainerCreateBody {
    let mut labels = HashMap::from([
        (LABEL_MANAGED.to_string(), "true".to_string()),
        (LABEL_TASK.to_string(), spec.task_id.clone()),
        (LABEL_WORKER.to_string(), spec.worker_id.clone()),
    ]);
    if let Some(l) = &cfg.tuning.liveness {
        labels.insert(LABEL_HOST.to_string(), l.host.clone());
    }
    ContainerCreateBody {
        image: Some(image.to_string()),
        user: Some({
            let (uid, gid) = stub_user();
            format!("{uid}:{gid}")
        }),
        entrypoint: Some(vec![STUB_TARGET.to_string()]),
        cmd: Some(Vec::new()),
        working_dir: Some(WORK_DIR.to_string()),
        labels: Some(labels),
        // The stub talks over stdin/stdout; stdin closes when the worker's attach
        // connection does, which makes the stub stop the script.
        attach_stdin: Some(true),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        open_stdin: Some(true),
        stdin_once: Some(true),
        tty: Some(false),
        host_config: Some(host_config(cfg, spec, facts, scratch)),
        networking_config: match (addr, &cfg.cfg.net) {
            (Some(addr), Some(net)) => Some(NetworkingConfig {
                endpoints_config: Some(HashMap::from([(
                    net.cfg.docker_network.clone(),
                    EndpointSettings {
                        ipam_config: Some(EndpointIpamConfig {
                            ipv4_address: Some(addr.to_string()),
                            ..Default::default()
                        }),
                        ..Default::default()
                    },
                )])),
            }),
            _ => None,
        },
        ..Default::default()
    }
}

/// Every limit of a task container. With a `scratch`, `/work`, `/tmp`,
/// `/dev/shm` and the image's volumes are its directories (one tmpfs of
/// `disk_bytes` in total); without, each is a tmpfs of `disk_bytes`.
pub(super) fn host_config(
    cfg: &Settings,
    spec: &Spec,
    facts: &ImageFacts,
    scratch: Option<&Scratch>,
) -> HostConfig {
    let (tuning, cfg) = (&cfg.tuning, &cfg.cfg);
    let limits = &spec.limits;
    let networked = limits.network && cfg.allow_network;
    let network = if networked {
        cfg.net
            .as_ref()
            .map_or_else(|| tuning.network.clone(), |n| n.cfg.docker_network.clone())
    } else {
        "none".to_string()
    };
    let disk = limits.disk_bytes.max(MIN_TMPFS_BYTES);
    let owner = format!("uid={},gid={}", facts.uid, facts.gid);
    let stub_owner = format!("uid={},gid={}", stub_user().0, facts.gid);
    let mut tmpfs = HashMap::from([(
        OUTPUT_DIR.to_string(),
        format!(
            "rw,noexec,nosuid,nodev,size={},{stub_owner},mode=02710",
            limits
                .output_file_bytes
                .saturating_mul(2)
                .saturating_add(SCRIPT_ROOM)
                .saturating_add(MIN_TMPFS_BYTES)
        ),
    )]);
    let mut mounts = vec![Mount {
        target: Some(STUB_TARGET.to_string()),
        source: Some(cfg.stub_path.to_string_lossy().into_owned()),
        typ: Some(MountType::BIND),
        read_only: Some(true),
        ..Default::default()
    }];
    let bind = |source: std::path::PathBuf, target: &str| Mount {
        target: Some(target.to_string()),
        source: Some(source.to_string_lossy().into_owned()),
        typ: Some(MountType::BIND),
        read_only: Some(false),
        bind_options: Some(MountBindOptions {
            propagation: Some(MountBindOptionsPropagationEnum::RPRIVATE),
            ..Default::default()
        }),
        ..Default::default()
    };
    match scratch {
        Some(s) => {
            mounts.push(bind(s.work(), WORK_DIR));
            mounts.push(bind(s.tmp(), TMP_DIR));
            mounts.push(bind(s.shm(), SHM_DIR));
            for (i, volume) in facts.volumes.iter().enumerate() {
                mounts.push(bind(s.volume(i), volume));
            }
        }
        None => {
            tmpfs.insert(
                WORK_DIR.to_string(),
                format!("rw,exec,nosuid,nodev,size={disk},{owner},mode=0700"),
            );
            tmpfs.insert(
                TMP_DIR.to_string(),
                format!("rw,noexec,nosuid,nodev,size={disk},{owner},mode=1777"),
            );
            for volume in &facts.volumes {
                tmpfs.entry(volume.clone()).or_insert_with(|| {
                    format!("rw,noexec,nosuid,nodev,size={disk},{owner},mode=0700")
                });
            }
        }
    }
    let memory = to_i64(limits.memory_bytes.max(MIN_MEMORY_BYTES));
    let cpus = if limits.cpus.is_finite() {
        limits.cpus.max(MIN_CPUS)
    } else {
        MIN_CPUS
    };
    let ulimit = |name: &str, value: u64| ResourcesUlimits {
        name: Some(name.to_string()),
        soft: Some(to_i64(value)),
        hard: Some(to_i64(value)),
    };
    HostConfig {
        network_mode: Some(network),
        readonly_rootfs: Some(true),
        tmpfs: Some(tmpfs),
        shm_size: scratch.is_none().then_some(to_i64(disk)),
        mounts: Some(mounts),
        cap_drop: Some(vec!["ALL".to_string()]),
        cap_add: Some(STUB_CAPS.iter().map(|c| c.to_string()).collect()),
        readonly_paths: Some(READONLY_PATHS.iter().map(|p| p.to_string()).collect()),
        security_opt: Some(vec![
            "no-new-privileges".to_string(),
            seccomp_opt(networked),
        ]),
        privileged: Some(false),
        memory: Some(memory),
        memory_swap: Some(memory),
        oom_kill_disable: Some(false),
        oom_score_adj: Some(1000),
        nano_cpus: Some((cpus * 1e9).round() as i64),
        pids_limit: Some(to_i64(limits.pids.max(1).saturating_add(PIDS_OVERHEAD))),
        ulimits: Some(vec![ulimit("nofile", tuning.nofile), ulimit("core", 0)]),
        init: Some(true),
        ipc_mode: Some("private".to_string()),
        cgroupns_mode: Some(HostConfigCgroupnsModeEnum::PRIVATE),
        log_config: Some(HostConfigLogConfig {
            typ: Some("none".to_string()),
            config: None,
        }),
        auto_remove: Some(false),
        runtime: tuning.runtime.clone(),
        ..Default::default()
    }
}

/// Krill's seccomp allow-list as Docker's `SecurityOpt` (built once per variant).
fn seccomp_opt(network: bool) -> String {
    static OPTS: std::sync::OnceLock<[String; 2]> = std::sync::OnceLock::new();
    let [off, on] = OPTS.get_or_init(|| {
        [
            crate::sandbox::seccomp::docker::security_opt(false),
            crate::sandbox::seccomp::docker::security_opt(true),
        ]
    });
    if network {
        on.clone()
    } else {
        off.clone()
    }
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// The uid and gid a task runs as: the image's configured user when it is a
/// non-root numeric id (`uid` or `uid:gid`; a missing or root gid becomes the
/// uid), else `fallback`. Names are not resolved (that would need the image's
/// /etc/passwd) and get the fallback too.
pub(super) fn task_user(image_user: Option<&str>, fallback: (u32, u32)) -> (u32, u32) {
    let Some(user) = image_user.map(str::trim).filter(|u| !u.is_empty()) else {
        return fallback;
    };
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    match (u.parse::<u32>(), g.map(str::parse::<u32>)) {
        (Ok(0), _) | (Err(_), _) | (_, Some(Err(_))) => fallback,
        (Ok(uid), Some(Ok(gid))) if gid != 0 => (uid, gid),
        (Ok(uid), _) => (uid, uid),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::sandbox::Effective;
    use std::time::Duration;

    fn spec(network: bool) -> Spec {
        Spec {
            task_id: "t1".into(),
            worker_id: "w1".into(),
            script: "true".into(),
            interpreter: vec!["sh".into()],
            env: vec![],
            limits: Effective {
                timeout: Duration::from_secs(5),
                memory_bytes: 64 << 20,
                cpus: 0.5,
                pids: 32,
                disk_bytes: 16 << 20,
                output_file_bytes: 1 << 20,
                network,
                network_allow: Vec::new(),
            },
            image: None,
        }
    }

    fn facts() -> ImageFacts {
        ImageFacts {
            uid: 65534,
            gid: 65534,
            path: "/bin".into(),
            env: vec![],
            volumes: vec!["/data".into()],
        }
    }

    #[test]
    fn every_limit_is_set() {
        let cfg = Settings::default();
        let hc = host_config(&cfg, &spec(false), &facts(), None);
        assert_eq!(hc.network_mode.as_deref(), Some("none"));
        assert_eq!(hc.readonly_rootfs, Some(true));
        assert_eq!(hc.cap_drop, Some(vec!["ALL".to_string()]));
        assert_eq!(hc.memory, Some(64 << 20));
        assert_eq!(hc.memory_swap, Some(64 << 20));
        assert_eq!(hc.nano_cpus, Some(500_000_000));
        assert_eq!(hc.pids_limit, Some(34));
        assert_eq!(hc.init, Some(true));
        assert_eq!(hc.privileged, Some(false));
        assert_eq!(hc.auto_remove, Some(false));
        let opts = hc.security_opt.clone().unwrap();
        assert_eq!(opts[0], "no-new-privileges");
        let profile: serde_json::Value =
            serde_json::from_str(opts[1].strip_prefix("seccomp=").unwrap()).unwrap();
        assert_eq!(profile["defaultAction"], "SCMP_ACT_ERRNO");
        let tmpfs = hc.tmpfs.unwrap();
        assert!(tmpfs["/work"].contains("size=16777216,uid=65534,gid=65534"));
        assert!(tmpfs["/data"].contains("noexec"));
        assert!(hc.binds.is_none());
        assert_eq!(hc.mounts.unwrap()[0].read_only, Some(true));
        assert_eq!(
            hc.cap_add,
            Some(vec!["SETUID".into(), "SETGID".into(), "KILL".into()])
        );
        assert!(hc.readonly_paths.unwrap().contains(&"/proc".to_string()));
        // The output dir is the stub's, its group the task's.
        assert!(tmpfs["/.krill/out"].contains("uid=0,gid=65534,mode=02710"));
        let body = create_body(
            &Settings::default(),
            &spec(false),
            "img",
            &facts(),
            None,
            None,
        );
        assert_eq!(body.user.as_deref(), Some("0:0"));
        assert_ne!(stub_user().0, facts().uid);
    }

    #[test]
    fn network_needs_both_the_task_and_the_pool() {
        let mut cfg = Settings::default();
        let net = |cfg: &Settings, on| host_config(cfg, &spec(on), &facts(), None).network_mode;
        assert_eq!(net(&cfg, true).as_deref(), Some("none"));
        cfg.cfg.allow_network = true;
        assert_eq!(net(&cfg, false).as_deref(), Some("none"));
        assert_eq!(net(&cfg, true).as_deref(), Some("bridge"));
    }

    #[test]
    fn zero_never_means_unlimited() {
        let mut s = spec(false);
        s.limits.memory_bytes = 0;
        s.limits.cpus = 0.0;
        s.limits.pids = 0;
        s.limits.disk_bytes = 0;
        let hc = host_config(&Settings::default(), &s, &facts(), None);
        assert_eq!(hc.memory, Some(MIN_MEMORY_BYTES as i64));
        assert_eq!(hc.nano_cpus, Some(10_000_000));
        assert_eq!(hc.pids_limit, Some(3));
        assert!(hc.tmpfs.unwrap()["/tmp"].contains("size=65536"));
    }

    #[test]
    fn user_is_the_images_non_root_numeric_user() {
        let fb = (65534, 65534);
        assert_eq!(task_user(None, fb), fb);
        assert_eq!(task_user(Some(""), fb), fb);
        assert_eq!(task_user(Some("root"), fb), fb);
        assert_eq!(task_user(Some("0"), fb), fb);
        assert_eq!(task_user(Some("0:1000"), fb), fb);
        assert_eq!(task_user(Some("nobody"), fb), fb);
        assert_eq!(task_user(Some("1000:x"), fb), fb);
        assert_eq!(task_user(Some("1000"), fb), (1000, 1000));
        assert_eq!(task_user(Some("1000:0"), fb), (1000, 1000));
        assert_eq!(task_user(Some("1000:2000"), fb), (1000, 2000));
    }
}
