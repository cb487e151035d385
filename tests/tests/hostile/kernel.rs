//! Hostile cases of the kernel surface (issue 21), run by the same table as the
//! rest of the suite in both sandboxes: the seccomp allow-list refuses each
//! syscall of its table with the stated errno and still runs a real workload;
//! `/sys/fs/cgroup` shows only the task's own cgroup; the audit login uid
//! cannot be set; a container's disk is `disk_bytes` in total. Each runs under
//! python3 (the host's in the process sandbox, `krill/python:1` in a container)
//! where it needs raw syscalls.

use super::{need, no_tweak, Case, Sb, Task, TaskResult, SUCCEEDED};

/// The image with python3 (and coreutils, tar, gzip) for container cases.
pub const PYTHON_IMAGE: &str = "krill/python:1";

/// Refused: which errnos a row accepts, in the (process, container) sandbox.
struct Row {
    name: &'static str,
    /// Python expression: the syscall's number and arguments.
    call: &'static str,
    process: &'static [&'static str],
    container: &'static [&'static str],
}

const EPERM: &[&str] = &["EPERM"];
const ENOSYS: &[&str] = &["ENOSYS"];
const EAFNOSUPPORT: &[&str] = &["EAFNOSUPPORT"];
/// Calls newer than the libseccomp Docker's runtime links (Debian 12: 2.5.4):
/// the runtime skips a name it does not know, so the call gets the profile's
/// default, ENOSYS — refused either way.
const EPERM_OR_NEWER: &[&str] = &["EPERM", "ENOSYS"];

/// The table of refused syscalls (x86_64 numbers), with the errno each gets.
const TABLE: &[Row] = &[
    Row {
        name: "ptrace(PTRACE_ATTACH, 1)",
        call: "101, 16, 1, 0, 0",
        process: EPERM,
        container: EPERM,
    },
    Row {
        name: "process_vm_readv",
        call: "310, 1, 0, 0, 0, 0, 0",
        process: EPERM,
        container: EPERM,
    },
    Row {
        name: "pidfd_getfd",
        call: "438, 0, 0, 0",
        process: EPERM,
        container: EPERM,
    },
    Row {
        name: "kcmp",
        call: "312, 1, 1, 0, 0, 0",
        process: EPERM,
        container: EPERM,
    },
    Row {
        name: "modify_ldt",
        call: "154, 0, 0, 0",
        process: EPERM,
        container: EPERM,
    },
    Row {
        name: "personality(ADDR_NO_RANDOMIZE)",
        call: "135, 0x0040000",
        process: EPERM_OR_NEWER,
        container: EPERM_OR_NEWER,
    },
    Row {
        name: "bpf",
        call: "321, 0, 0, 0",
        process: EPERM,
        container: EPERM,
    },
    Row {
        name: "perf_event_open",
        call: "298, 0, 0, -1, -1, 0",
        process: EPERM,
        container: EPERM,
    },
    Row {
        name: "userfaultfd",
        call: "323, 0",
        process: EPERM,
        container: EPERM,
    },
    Row {
        name: "keyctl",
        call: "250, 0, 0, 0, 0, 0",
        process: EPERM,
        container: EPERM,
    },
    Row {
        name: "add_key",
        call: "248, 0, 0, 0, 0, 0",
        process: EPERM,
        container: EPERM,
    },
    Row {
        name: "request_key",
        call: "249, 0, 0, 0, 0",
        process: EPERM,
        container: EPERM,
    },
    Row {
        name: "io_uring_setup",
        call: "425, 1, 0",
        process: EPERM,
        container: EPERM,
    },
    Row {
        name: "io_uring_enter",
        call: "426, 0, 0, 0, 0, 0, 0",
        process: EPERM,
        container: EPERM,
    },
    Row {
        name: "io_uring_register",
        call: "427, 0, 0, 0, 0",
        process: EPERM,
        container: EPERM,
    },
    Row {
        name: "mount",
        call: "165, 0, 0, 0, 0, 0",
        process: EPERM,
        container: EPERM,
    },
    Row {
        name: "umount2",
        call: "166, 0, 0",
        process: EPERM,
        container: EPERM,
    },
    Row {
        name: "pivot_root",
        call: "155, 0, 0",
        process: EPERM,
        container: EPERM,
    },
    Row {
        name: "chroot",
        call: "161, 0",
        process: EPERM,
        container: EPERM,
    },
    Row {
        name: "fsopen",
        call: "430, 0, 0",
        process: EPERM,
        container: EPERM,
    },
    Row {
        name: "fsmount",
        call: "432, 0, 0, 0",
        process: EPERM,
        container: EPERM,
    },
    Row {
        name: "fspick",
        call: "433, -100, 0, 0",
        process: EPERM,
        container: EPERM,
    },
    Row {
        name: "open_tree",
        call: "428, -100, 0, 0",
        process: EPERM,
        container: EPERM,
    },
    Row {
        name: "move_mount",
        call: "429, -100, 0, -100, 0, 0",
        process: EPERM,
        container: EPERM,
    },
    Row {
        name: "mount_setattr",
        call: "442, -100, 0, 0, 0, 0",
        process: EPERM,
        container: EPERM,
    },
    Row {
        name: "open_tree_attr",
        call: "467, -100, 0, 0, 0, 0",
        process: EPERM,
        container: EPERM_OR_NEWER,
    },
    Row {
        name: "listmount",
        call: "458, 0, 0, 0, 0",
        process: EPERM,
        container: EPERM_OR_NEWER,
    },
    Row {
        name: "statmount",
        call: "457, 0, 0, 0, 0",
        process: EPERM,
        container: EPERM_OR_NEWER,
    },
    Row {
        name: "quotactl",
        call: "179, 0, 0, 0, 0",
        process: EPERM,
        container: EPERM,
    },
    Row {
        name: "quotactl_fd",
        call: "443, 0, 0, 0, 0",
        process: EPERM,
        container: EPERM,
    },
    Row {
        name: "unshare(CLONE_NEWUSER)",
        call: "272, 0x10000000",
        process: EPERM,
        container: EPERM,
    },
    Row {
        name: "setns",
        call: "308, 0, 0",
        process: EPERM,
        container: EPERM,
    },
    Row {
        name: "clone(CLONE_NEWUSER)",
        call: "56, 0x10000011, 0, 0, 0, 0",
        process: EPERM,
        container: EPERM,
    },
    Row {
        name: "clone(CLONE_NEWNET)",
        call: "56, 0x40000011, 0, 0, 0, 0",
        process: EPERM,
        container: EPERM,
    },
    Row {
        name: "clone3",
        call: "435, 0, 0",
        process: ENOSYS,
        container: ENOSYS,
    },
    Row {
        name: "kexec_load",
        call: "246, 0, 0, 0, 0",
        process: EPERM,
        container: EPERM,
    },
    Row {
        name: "init_module",
        call: "175, 0, 0, 0",
        process: EPERM,
        container: EPERM,
    },
    Row {
        name: "finit_module",
        call: "313, -1, 0, 0",
        process: EPERM,
        container: EPERM,
    },
    Row {
        name: "fanotify_init",
        call: "300, 0, 0",
        process: EPERM,
        container: EPERM,
    },
    Row {
        name: "open_by_handle_at",
        call: "304, -1, 0, 0",
        process: EPERM,
        container: EPERM,
    },
    Row {
        name: "settimeofday",
        call: "164, 0, 0",
        process: EPERM,
        container: EPERM,
    },
    Row {
        name: "socket(AF_VSOCK)",
        call: "41, 40, 1, 0",
        process: EAFNOSUPPORT,
        container: EAFNOSUPPORT,
    },
    Row {
        name: "socket(AF_VSOCK, SOCK_DGRAM)",
        call: "41, 40, 2, 0",
        process: EAFNOSUPPORT,
        container: EAFNOSUPPORT,
    },
    Row {
        name: "socket(AF_PACKET)",
        call: "41, 17, 3, 0",
        process: EAFNOSUPPORT,
        container: EAFNOSUPPORT,
    },
    Row {
        name: "socket(AF_ALG)",
        call: "41, 38, 5, 0",
        process: EAFNOSUPPORT,
        container: EAFNOSUPPORT,
    },
    Row {
        name: "socket(AF_BLUETOOTH)",
        call: "41, 31, 1, 0",
        process: EAFNOSUPPORT,
        container: EAFNOSUPPORT,
    },
    Row {
        name: "socket(AF_NETLINK) without network",
        call: "41, 16, 3, 0",
        process: EAFNOSUPPORT,
        container: EAFNOSUPPORT,
    },
    Row {
        name: "socket(family 0x1_0000_0028)",
        call: "41, 0x100000028, 1, 0",
        process: EAFNOSUPPORT,
        container: EAFNOSUPPORT,
    },
    Row {
        name: "socketpair(AF_VSOCK)",
        call: "53, 40, 1, 0, 0",
        process: EAFNOSUPPORT,
        container: EAFNOSUPPORT,
    },
    Row {
        name: "mseal (new, not allowed)",
        call: "462, 0, 0, 0",
        process: ENOSYS,
        container: ENOSYS,
    },
    Row {
        name: "syscall 1000 (unknown)",
        call: "1000",
        process: ENOSYS,
        container: ENOSYS,
    },
];

/// Runs every row's syscall and prints `name<TAB>errno` (`OK` if it succeeded).
fn table_script() -> String {
    let mut rows = String::new();
    for r in TABLE {
        rows.push_str(&format!("    ({:?}, ({})),\n", r.name, r.call));
    }
    format!(
        r#"import ctypes, errno, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
ROWS = [
{rows}]
for name, call in ROWS:
    nr, *args = call if isinstance(call, tuple) else (call,)
    ctypes.set_errno(0)
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    if r == 0 and nr == 56:
        os._exit(0)  # a clone that worked: the child leaves at once
    e = ctypes.get_errno()
    print(name + "\t" + ("OK" if r != -1 else errno.errorcode.get(e, str(e))), flush=True)
"#
    )
}

fn check_table(r: &TaskResult, sb: Sb) -> Result<(), String> {
    let mut wrong = Vec::new();
    for row in TABLE {
        let want = if sb == Sb::Process {
            row.process
        } else {
            row.container
        };
        let got = r
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix(row.name)?.strip_prefix('\t'));
        match got {
            Some(e) if want.contains(&e) => {}
            other => wrong.push(format!("{}: {other:?}, expected {want:?}", row.name)),
        }
    }
    need(wrong.is_empty(), &wrong.join("; "), r)
}

/// A real workload: shell pipelines, python3 with threads, a process pool and
/// subprocesses, sockets on loopback, tar/gzip/sha256sum, and git when present.
const CORPUS: &str = r#"set -eu
cd "$HOME"
test "$(printf 'b\na\nc\na\n' | sort | uniq | tr a-z A-Z | paste -sd, -)" = "A,B,C"
seq 1 2000 | awk '{ s += $1 } END { print s }' | grep -qx 2001000
python3 - <<'EOF'
import asyncio, concurrent.futures, hashlib, json, multiprocessing, os, socket, subprocess, tempfile, threading
def work(n):
    return hashlib.sha256(str(n).encode()).hexdigest()
with concurrent.futures.ThreadPoolExecutor(8) as ex:
    assert len(set(ex.map(work, range(200)))) == 200
ctx = multiprocessing.get_context("fork")
with ctx.Pool(2) as pool:
    assert pool.map(work, range(20)) == [work(n) for n in range(20)]
out = subprocess.run(["sh", "-c", "echo sub | tr a-z A-Z"], capture_output=True, text=True, check=True).stdout
assert out == "SUB\n", out
a, b = socket.socketpair()
a.sendall(b"ping"); assert b.recv(4) == b"ping"
srv = socket.socket(); srv.bind(("127.0.0.1", 0)); srv.listen()
t = threading.Thread(target=lambda: srv.accept()[0].sendall(b"hi")); t.start()
c = socket.create_connection(srv.getsockname()); assert c.recv(2) == b"hi"; t.join()
async def main():
    p = await asyncio.create_subprocess_exec("echo", "async", stdout=asyncio.subprocess.PIPE)
    o, _ = await p.communicate(); assert o == b"async\n"
asyncio.run(main())
with tempfile.TemporaryDirectory() as d:
    json.dump({"k": 1}, open(os.path.join(d, "x.json"), "w"))
print("python ok")
EOF
mkdir -p src/sub
seq 1 5000 > src/sub/numbers
tar czf src.tgz src
gzip -t src.tgz
sha256sum src.tgz > sums
sha256sum -c sums >/dev/null
mkdir out && tar xzf src.tgz -C out
cmp src/sub/numbers out/src/sub/numbers
if command -v git >/dev/null 2>&1; then
  git init -q repo && cd repo
  echo hello > f && git add f
  git -c user.name=krill -c user.email=k@example.invalid commit -qm first
  test "$(git log --oneline | wc -l)" -eq 1
  echo "git ok"
  cd ..
fi
echo CORPUS-OK
"#;

/// Lists every cgroup the task can see below the roots of `/sys/fs/cgroup`
/// (the task's own cgroup has no children), and any line naming a worker.
const CGROUP_VIEW: &str = r#"find /sys/fs/cgroup -mindepth 2 -type d 2>/dev/null | head -20 | sed 's/^/DIR /'
cat /sys/fs/cgroup/*/cgroup.procs /sys/fs/cgroup/cgroup.procs 2>/dev/null | sort -un | sed 's/^/PID /'
grep -E ' - cgroup2? ' /proc/self/mountinfo | awk '{ print "ROOT " $4 }'
echo VIEW-DONE
"#;

fn check_cgroup_view(r: &TaskResult, _: Sb) -> Result<(), String> {
    need(r.stdout.contains("VIEW-DONE"), "did not finish", r)?;
    need(
        !r.stdout.lines().any(|l| l.starts_with("DIR ")),
        "cgroups of others (or the host's tree) are visible",
        r,
    )?;
    need(
        r.stdout
            .lines()
            .filter_map(|l| l.strip_prefix("ROOT "))
            .all(|root| root == "/"),
        "a cgroup mount shows a host path",
        r,
    )?;
    need(
        !r.stdout.contains("krill") && !r.stdout.contains("docker"),
        "a worker's or the engine's cgroup is named",
        r,
    )
}

const LOGINUID: &str = r#"before=$(cat /proc/self/loginuid 2>/dev/null || echo none)
if (echo 0 > /proc/self/loginuid) 2>/dev/null; then echo WROTE; fi
if (echo 1234 > /proc/self/loginuid) 2>/dev/null; then echo WROTE; fi
after=$(cat /proc/self/loginuid 2>/dev/null || echo none)
sh -c 'cat /proc/self/loginuid 2>/dev/null || echo none' > /tmp/child
echo "before=$before after=$after child=$(cat /tmp/child) uid=$(id -u)"
"#;

fn check_loginuid(r: &TaskResult, sb: Sb) -> Result<(), String> {
    need(!r.stdout.contains("WROTE"), "the login uid was written", r)?;
    let line = r
        .stdout
        .lines()
        .find(|l| l.starts_with("before="))
        .unwrap_or("");
    let field = |k: &str| {
        line.split(' ')
            .find_map(|f| f.strip_prefix(k))
            .unwrap_or("")
            .to_string()
    };
    let (before, after, child, uid) = (
        field("before="),
        field("after="),
        field("child="),
        field("uid="),
    );
    need(
        before == after && after == child,
        "the login uid changed",
        r,
    )?;
    // Set for the task (not left unset, which anyone may set once) — or, in a
    // container, whatever the engine left (unset here): its /proc is read-only
    // (so that no process lowers its oom_score_adj), so nobody in it can set
    // the login uid, the stub included (the writes above were refused).
    need(
        sb == Sb::Container || before == "none" || before == uid,
        "the login uid is not the task's own uid",
        r,
    )
}

/// Writes 10 MiB into each writable place of a 16 MiB task; what landed in
/// total must fit 16 MiB.
const DISK_TOTAL: &str = r#"for d in "$HOME" /tmp /dev/shm; do
  dd if=/dev/zero of="$d/fill" bs=1048576 count=10 2>/dev/null || true
done
total=0
for d in "$HOME" /tmp /dev/shm; do
  k=$(du -k "$d/fill" 2>/dev/null | cut -f1); total=$((total + ${k:-0}))
done
echo "TOTAL_KIB $total"
"#;

fn check_disk_total(r: &TaskResult, _: Sb) -> Result<(), String> {
    let total: u64 = r
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("TOTAL_KIB ")?.trim().parse().ok())
        .unwrap_or(u64::MAX);
    need(
        (15 * 1024..=16 * 1024).contains(&total),
        &format!("{total} KiB written with a 16 MiB disk"),
        r,
    )
}

fn python(t: &mut Task) {
    t.image = Some(PYTHON_IMAGE.into());
    t.interpreter = vec!["python3".into()];
    t.limits.timeout_secs = Some(60);
}

fn with_python_image(t: &mut Task) {
    t.image = Some(PYTHON_IMAGE.into());
    t.limits.timeout_secs = Some(120);
    t.limits.pids = Some(256);
}

/// The kernel-surface rows of the table.
pub fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "seccomp: every syscall of the table refused with its errno",
            script: table_script(),
            tweak: python,
            status: [SUCCEEDED, SUCCEEDED],
            check: check_table,
            weakness: [None, None],
            followup: None,
        },
        Case {
            name: "seccomp: the workload corpus runs under the allow-list",
            script: CORPUS.into(),
            tweak: with_python_image,
            status: [SUCCEEDED, SUCCEEDED],
            check: |r, _| {
                need(
                    r.stdout.contains("python ok") && r.stdout.contains("CORPUS-OK"),
                    "corpus",
                    r,
                )
            },
            weakness: [None, None],
            followup: None,
        },
        Case {
            name: "/sys/fs/cgroup shows only the task's own cgroup",
            script: CGROUP_VIEW.into(),
            tweak: no_tweak,
            status: [SUCCEEDED, SUCCEEDED],
            check: check_cgroup_view,
            weakness: [None, None],
            followup: None,
        },
        Case {
            name: "loginuid cannot be set",
            script: LOGINUID.into(),
            tweak: no_tweak,
            status: [SUCCEEDED, SUCCEEDED],
            check: check_loginuid,
            weakness: [None, None],
            followup: None,
        },
        Case {
            name: "disk_bytes is the total of every writable mount",
            script: DISK_TOTAL.into(),
            tweak: |t| t.limits.disk_bytes = Some(16 << 20),
            status: [SUCCEEDED, SUCCEEDED],
            check: check_disk_total,
            weakness: [None, None],
            followup: None,
        },
        Case {
            name: "a task runs as a uid of its own, not a host user's",
            script: "id -u; id -g; cat /proc/self/status | grep -E '^(Uid|Gid):'".into(),
            tweak: no_tweak,
            status: [SUCCEEDED, SUCCEEDED],
            check: |r, _| {
                let uid: u32 = r
                    .stdout
                    .lines()
                    .next()
                    .and_then(|l| l.trim().parse().ok())
                    .unwrap_or(0);
                need(
                    uid >= 200_000,
                    &format!("uid {uid} is not from the sandbox range"),
                    r,
                )
            },
            weakness: [None, None],
            followup: None,
        },
    ]
}

/// Takes the whole per-user budget of inotify instances, POSIX message queue
/// bytes and pipe-buffer pages, says so, and holds them.
const HOLDER: &str = r#"import ctypes, fcntl, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
held = []
inotify = 0
while inotify < 100000:
    fd = libc.inotify_init1(0)
    if fd < 0:
        break
    held.append(fd); inotify += 1
inotify_errno = ctypes.get_errno()
class Attr(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_long), ("maxmsg", ctypes.c_long), ("msgsize", ctypes.c_long), ("cur", ctypes.c_long), ("pad", ctypes.c_long * 4)]
attr = Attr(0, 10, 8192, 0)
mq = 0
while mq < 1000:
    fd = libc.mq_open(("/krill-hold-%d" % mq).encode(), os.O_CREAT | os.O_RDWR, 0o600, ctypes.byref(attr))
    if fd < 0:
        break
    held.append(fd); mq += 1
mq_errno = ctypes.get_errno()
pipes = 0
big = 0
while pipes < 200:
    r, w = os.pipe()
    held += [r, w]; pipes += 1
    try:
        fcntl.fcntl(w, 1031, 1 << 20)  # F_SETPIPE_SZ
        big += 1
    except OSError:
        break
print("HELD inotify=%d/%d mq=%d/%d pipes_1m=%d" % (inotify, inotify_errno, mq, mq_errno, big), flush=True)
time.sleep(120)
"#;

/// Asks for a share of each budget and says what it got.
const VICTIM: &str = r#"import ctypes, fcntl, os
libc = ctypes.CDLL(None, use_errno=True)
inotify = sum(1 for _ in range(20) if libc.inotify_init1(0) >= 0)
class Attr(ctypes.Structure):
    _fields_ = [("flags", ctypes.c_long), ("maxmsg", ctypes.c_long), ("msgsize", ctypes.c_long), ("cur", ctypes.c_long), ("pad", ctypes.c_long * 4)]
attr = Attr(0, 10, 8192, 0)
mq = sum(1 for i in range(3) if libc.mq_open(("/krill-victim-%d" % i).encode(), os.O_CREAT | os.O_RDWR, 0o600, ctypes.byref(attr)) >= 0)
r, w = os.pipe()
default = fcntl.fcntl(w, 1032)  # F_GETPIPE_SZ
try:
    grown = fcntl.fcntl(w, 1031, 1 << 20)
except OSError:
    grown = 0
print("GOT inotify=%d mq=%d pipe=%d grown=%d uid=%d" % (inotify, mq, default, grown, os.getuid()), flush=True)
"#;

fn field(line: &str, key: &str) -> i64 {
    line.split(' ')
        .find_map(|f| f.strip_prefix(key)?.split('/').next()?.parse().ok())
        .unwrap_or(-1)
}

async fn budgets(sb: Sb) {
    use krill_tests::{client, task, unique_pool, WorkerBuilder};
    let worker = |pool: &str| {
        let b = WorkerBuilder::new(pool).arg("--concurrency").arg("2");
        match sb {
            Sb::Process => b.arg("--sandbox").arg("process"),
            Sb::Container => b
                .arg("--sandbox")
                .arg("container")
                .arg("--image")
                .arg(PYTHON_IMAGE),
        }
    };
    let (pool_a, pool_b) = (unique_pool("budget-a"), unique_pool("budget-b"));
    let _a = worker(&pool_a).start().await;
    let _b = worker(&pool_b).start().await;
    let c = client().await;
    let mk = |script: &str| {
        let mut t = super::prepare(task(script), sb);
        t.image = (sb == Sb::Container).then(|| PYTHON_IMAGE.to_string());
        t.interpreter = vec!["python3".into()];
        t.limits.timeout_secs = Some(90);
        t
    };
    let holder = mk(HOLDER);
    let mut logs = c.follow(&holder.id).await.expect("follow");
    c.submit(&pool_a, &holder).await.expect("submit");
    let mut out = String::new();
    let held = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        while let Some(chunk) = logs.next().await {
            out.push_str(&chunk.data);
            if let Some(line) = out.lines().find(|l| l.starts_with("HELD ")) {
                return line.to_string();
            }
            if chunk.eof {
                break;
            }
        }
        panic!("the holder ended without holding: {out}");
    })
    .await
    .expect("the holder said HELD");
    // It really exhausted its own budgets (else the victims prove nothing).
    assert!(field(&held, "inotify=") >= 100, "{held}");
    assert!(
        held.contains(&format!("/{}", libc::EMFILE)),
        "inotify or mq not exhausted: {held}"
    );
    assert!(field(&held, "mq=") >= 1, "{held}");
    for (pool, where_) in [
        (&pool_a, "another slot of the same worker"),
        (&pool_b, "another worker"),
    ] {
        let victim = mk(VICTIM);
        let r = krill_tests::run_task(&c, pool, &victim).await;
        let got = r
            .stdout
            .lines()
            .find(|l| l.starts_with("GOT "))
            .unwrap_or("")
            .to_string();
        assert_eq!(r.status, super::Status::Succeeded, "{where_}: {r:?}");
        assert_eq!(field(&got, "inotify="), 20, "{where_}: {got}");
        assert_eq!(field(&got, "mq="), 3, "{where_}: {got}");
        assert_eq!(field(&got, "pipe="), 65536, "{where_}: {got}");
        assert_eq!(field(&got, "grown="), 1 << 20, "{where_}: {got}");
    }
    c.cancel(&holder.id).await.expect("cancel");
    let r = c
        .wait(&holder.id, Some(std::time::Duration::from_secs(60)))
        .await
        .expect("holder result");
    assert_eq!(r.status, super::Status::Cancelled, "{r:?}");
}

/// A task holding its uid's whole inotify, mqueue and pipe budgets leaves
/// them whole for a task on another slot and on another worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_budgets_are_the_tasks_own_in_the_process_sandbox() {
    budgets(Sb::Process).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_budgets_are_the_tasks_own_in_the_container_sandbox() {
    budgets(Sb::Container).await;
}

/// How a case's expectation differs under a container runtime, and why.
pub struct Difference {
    pub status: &'static [super::Status],
    pub check: super::Check,
    pub reason: &'static str,
}

/// The documented differences of `runtime` for the case `name`.
pub fn runtime_difference(runtime: &str, name: &str) -> Option<Difference> {
    if runtime != "runsc" {
        return None;
    }
    match name {
        "fork bomb" => Some(Difference {
            status: &[super::Status::TimedOut, super::Status::Failed],
            check: |_, _| Ok(()),
            reason: "under gVisor the container's pids limit also counts the sentry's own \
                     threads: the bomb's first forks already fail and the script exits",
        }),
        "seccomp: every syscall of the table refused with its errno" => Some(Difference {
            status: &[super::Status::Succeeded],
            check: check_table_ran,
            reason: "under gVisor the task's syscalls are served by the sentry, not the host \
                     kernel; Krill's profile is not loaded (this gVisor's OCI seccomp answers \
                     EPERM for every refusal, and glibc's threads need ENOSYS for clone3), so \
                     each row gets gVisor's own answer (some, such as unshare, work inside it)",
        }),
        "lower its own oom_score_adj" => Some(Difference {
            status: &[super::Status::Succeeded],
            check: |r, _| {
                let last = r.stdout.trim_end().lines().last().unwrap_or("");
                need(last == "0" || last == "1000", "no oom_score_adj read", r)
            },
            reason: "under gVisor the task's /proc is the sentry's emulation (the engine's \
                     read-only /proc is not applied there): a task may lower the oom_score_adj \
                     gVisor shows it, which the host's OOM killer never reads; the sandbox's \
                     host processes (runsc-sandbox, runsc-gofer) keep the engine's 1000 \
                     (measured by hand while the task had written 0)",
        }),
        "names of the host's directories in /proc/self/mountinfo" => Some(Difference {
            status: &[super::Status::Succeeded],
            check: |r, _| {
                if r.stdout.contains("krill-test") || r.stdout.contains("/w-") {
                    return Err(format!("mountinfo names a host work dir: {}", r.stdout));
                }
                Ok(())
            },
            reason: "under gVisor the container's mount table is the sentry's own, which may \
                     or may not name the engine's storage; it must still name no host work dir",
        }),
        _ => None,
    }
}

/// Under gVisor: every row ran (and answered without killing the task).
fn check_table_ran(r: &TaskResult, _: Sb) -> Result<(), String> {
    let missing: Vec<&str> = TABLE
        .iter()
        .filter(|row| {
            !r.stdout
                .lines()
                .any(|l| l.starts_with(&format!("{}\t", row.name)))
        })
        .map(|row| row.name)
        .collect();
    need(missing.is_empty(), &format!("rows missing: {missing:?}"), r)
}

/// Whether the engine the tests use lists `runtime`. When it does not, says
/// so plainly; under CI (`CI=true`) or `KRILL_REQUIRE_RUNSC=1` that is a
/// failure (CI's engine is started by scripts/lib.sh with it registered).
pub fn engine_has_runtime(runtime: &str) -> bool {
    let out = std::process::Command::new("docker")
        .args(["info", "--format", "{{json .Runtimes}}"])
        .output()
        .expect("docker info");
    let listed = String::from_utf8_lossy(&out.stdout).contains(&format!("\"{runtime}\""));
    let required = std::env::var("CI").is_ok_and(|v| v == "true")
        || std::env::var("KRILL_REQUIRE_RUNSC").is_ok_and(|v| v == "1");
    if !listed {
        let why =
            format!(
            "NOT RUN: the Docker engine{} has no `{runtime}` runtime (scripts/lib.sh registers \
             it when it starts dockerd; install it with `apt-get install runsc` and restart \
             dockerd with it, or point DOCKER_HOST at an engine that has it)",
            std::env::var("DOCKER_HOST").map(|h| format!(" at {h}")).unwrap_or_default()
        );
        assert!(!required, "{why}");
        eprintln!("{why}");
    }
    listed
}
