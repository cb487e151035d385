//! The policy as a Docker seccomp profile (the JSON `docker run --security-opt
//! seccomp=FILE` takes; the Engine API takes its text in
//! `HostConfig.SecurityOpt: ["seccomp=<json>"]`), so a task container runs under
//! Krill's allow-list whatever default profile the engine ships.
//!
//! The container's runtime (runc, crun) compiles it with libseccomp; a
//! syscall name the host's libseccomp does not know is skipped by the runtime,
//! which leaves that call to the default (refused with `ENOSYS`).

use serde_json::{json, Value};

use super::policy::{self, Action, Cond, Op, Rule};

fn scmp_arch() -> &'static str {
    if cfg!(target_arch = "aarch64") {
        "SCMP_ARCH_AARCH64"
    } else {
        "SCMP_ARCH_X86_64"
    }
}

fn arg(c: &Cond) -> Value {
    let (op, value, two) = match c.op {
        Op::Eq(v) => ("SCMP_CMP_EQ", v, 0),
        Op::Ne(v) => ("SCMP_CMP_NE", v, 0),
        Op::Ge(v) => ("SCMP_CMP_GE", v, 0),
        Op::MaskedEq { mask, value } => ("SCMP_CMP_MASKED_EQ", mask, value),
    };
    json!({"index": c.arg, "value": value, "valueTwo": two, "op": op})
}

fn action(a: Action) -> (&'static str, Option<i32>) {
    match a {
        Action::Allow => ("SCMP_ACT_ALLOW", None),
        Action::Errno(e) => ("SCMP_ACT_ERRNO", Some(e)),
    }
}

/// The profile for `rules`: unconditional rules grouped by action, one entry
/// per conditional rule.
pub fn profile_of(rules: &[Rule]) -> Value {
    let mut entries: Vec<Value> = Vec::new();
    let mut plain: Vec<(Action, Vec<&str>)> = Vec::new();
    for r in rules.iter().filter(|r| r.when.is_empty()) {
        match plain.iter_mut().find(|(a, _)| *a == r.action) {
            Some((_, names)) => names.push(r.syscall),
            None => plain.push((r.action, vec![r.syscall])),
        }
    }
    for (a, names) in plain {
        let (act, errno) = action(a);
        let mut e = json!({"names": names, "action": act});
        if let Some(errno) = errno {
            e["errnoRet"] = json!(errno);
        }
        entries.push(e);
    }
    for r in rules.iter().filter(|r| !r.when.is_empty()) {
        let (act, errno) = action(r.action);
        let mut e = json!({
            "names": [r.syscall],
            "action": act,
            "args": r.when.iter().map(arg).collect::<Vec<_>>(),
        });
        if let Some(errno) = errno {
            e["errnoRet"] = json!(errno);
        }
        entries.push(e);
    }
    json!({
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": policy::DEFAULT_ERRNO,
        "architectures": [scmp_arch()],
        "syscalls": entries,
    })
}

/// Krill's profile for a task container with or without network.
pub fn profile(network: bool) -> Value {
    profile_of(&policy::rules(network))
}

/// The `SecurityOpt` entry that applies it.
pub fn security_opt(network: bool) -> String {
    format!("seccomp={}", profile(network))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profile_has_the_allow_list_and_its_refusals() {
        let p = profile(false);
        assert_eq!(p["defaultAction"], "SCMP_ACT_ERRNO");
        assert_eq!(p["defaultErrnoRet"], libc::ENOSYS);
        let entries = p["syscalls"].as_array().expect("array");
        let allowed = entries
            .iter()
            .find(|e| e["action"] == "SCMP_ACT_ALLOW" && e.get("args").is_none())
            .expect("plain allow entry");
        let names: Vec<&str> = allowed["names"]
            .as_array()
            .expect("names")
            .iter()
            .filter_map(Value::as_str)
            .collect();
        assert!(names.contains(&"read") && names.contains(&"execve"));
        assert!(!names.contains(&"io_uring_setup") && !names.contains(&"ptrace"));
        let refused = entries
            .iter()
            .find(|e| e["errnoRet"] == libc::EPERM && e.get("args").is_none())
            .expect("plain EPERM entry");
        assert!(refused["names"]
            .as_array()
            .expect("names")
            .iter()
            .any(|n| n == "io_uring_setup"));
        // vsock: a conditional EAFNOSUPPORT entry on socket's first argument.
        assert!(entries.iter().any(|e| e["names"][0] == "socket"
            && e["errnoRet"] == libc::EAFNOSUPPORT
            && e["args"][0]["value"] == libc::AF_VSOCK));
        // netlink only with network.
        let netlink_allowed = |p: &Value| {
            p["syscalls"].as_array().expect("array").iter().any(|e| {
                e["names"][0] == "socket"
                    && e["action"] == "SCMP_ACT_ALLOW"
                    && e["args"][0]["value"] == libc::AF_NETLINK
            })
        };
        assert!(!netlink_allowed(&p));
        assert!(netlink_allowed(&profile(true)));
    }

    /// deploy/seccomp/ holds the generated profiles for operators (docker run
    /// --security-opt seccomp=…); regenerate with KRILL_UPDATE_SECCOMP=1.
    #[test]
    fn the_committed_profiles_are_current() {
        if !cfg!(target_arch = "x86_64") {
            return;
        }
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/seccomp");
        for (file, network) in [("krill.json", false), ("krill-network.json", true)] {
            let path = dir.join(file);
            let want = format!(
                "{}\n",
                serde_json::to_string_pretty(&profile(network)).expect("json")
            );
            if std::env::var_os("KRILL_UPDATE_SECCOMP").is_some() {
                std::fs::create_dir_all(&dir).expect("mkdir");
                std::fs::write(&path, &want).expect("write");
            }
            let have = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                have == want,
                "{} is stale: run KRILL_UPDATE_SECCOMP=1 cargo test -p worker --lib seccomp",
                path.display()
            );
        }
    }
}
