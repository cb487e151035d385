//! Runs the script and frames what it does back to the worker, in one poll loop.
//!
//! The loop waits on: the worker's stdin (for `Terminate`), the script's stdout and
//! stderr pipes, and a pidfd that becomes readable when the script exits (or a
//! short timer on kernels without pidfd). Before forwarding any output chunk it
//! checks whether `$KRILL_SENSITIVE_OUTPUT` changed, and sends its content first.
//!
//! The stub runs as another user than the script (root, with only the
//! capabilities to drop privileges and to signal the script's processes), and
//! drops to the script's uid and gid between fork and exec: the script cannot
//! open the stub's descriptors (the worker's attach stream) through
//! `/proc/<pid>/fd`, signal it, ptrace it or change its limits. When the script
//! has ended, every other process of the container is killed and gone before
//! the output files are read, so what is read is final.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::reap::{end_every_process, kill_all, set_loginuid, Group};
use stub::{read_capped, ExitStatus, FromStub, Request, ToStub, MAX_REQUEST_BYTES};

/// After `Terminate`, how long the script has between SIGTERM and SIGKILL.
pub const TERM_GRACE: Duration = Duration::from_secs(2);
/// After the script exits (and every other process of the task was killed, as
/// the process sandbox's init does), how long the rest of its pipes may take
/// to reach end-of-file.
pub const DRAIN_GRACE: Duration = Duration::from_secs(1);
/// How often the sensitive-output file is checked when no output arrives.
pub const SENSITIVE_POLL: Duration = Duration::from_millis(100);
/// After the exit frame, how long to wait for the worker's `Release` (it reads the
/// container's usage meanwhile) before exiting anyway.
pub const RELEASE_WAIT: Duration = Duration::from_secs(10);
/// Largest output chunk forwarded in one frame.
const CHUNK: usize = 64 * 1024;
/// Name of the script file in the output dir.
const SCRIPT_NAME: &str = "script";
/// How long every process of the task may take to be gone after SIGKILL
/// before the output files are given up.
pub const END_WAIT: Duration = Duration::from_secs(5);

/// The stub's stdin (messages from the worker) and stdout (frames to it).
pub struct Channel {
    input: File,
    output: File,
    pending: Vec<u8>,
    input_open: bool,
}

impl Channel {
    /// Duplicates fds 0 and 1 so that reads and writes bypass std's buffering.
    pub fn from_stdio() -> io::Result<Self> {
        Ok(Channel {
            input: File::from(io::stdin().as_fd().try_clone_to_owned()?),
            output: File::from(io::stdout().as_fd().try_clone_to_owned()?),
            pending: Vec::new(),
            input_open: true,
        })
    }

    /// Blocks until the request arrives; `Ok(None)` if stdin closed first.
    pub fn read_request(&mut self) -> Result<Option<Request>, String> {
        match stub::read_frame(&mut self.input, MAX_REQUEST_BYTES).map_err(|e| e.to_string())? {
            None => Ok(None),
            Some((kind, payload)) => match ToStub::decode(kind, &payload) {
                Ok(ToStub::Request(req)) => Ok(Some(*req)),
                Ok(other) => Err(format!("expected a request, got {other:?}")),
                Err(e) => Err(e.to_string()),
            },
        }
    }

    pub fn send(&mut self, msg: &FromStub) -> Result<(), String> {
        let mut buf = Vec::new();
        msg.encode(&mut buf).map_err(|e| e.to_string())?;
        self.output
            .write_all(&buf)
            .map_err(|e| format!("writing to the worker: {e}"))
    }

    /// Reads what stdin has (poll said it is readable) and decodes whole messages.
    fn read_messages(&mut self) -> Vec<ToStub> {
        let mut buf = [0u8; 4096];
        match self.input.read(&mut buf) {
            Ok(0) | Err(_) => {
                self.input_open = false;
                return Vec::new();
            }
            Ok(n) => self.pending.extend_from_slice(&buf[..n]),
        }
        let mut msgs = Vec::new();
        let mut used = 0;
        while let Ok(Some((kind, payload, n))) =
            stub::decode_frame(&self.pending[used..], MAX_REQUEST_BYTES)
        {
            if let Ok(m) = ToStub::decode(kind, payload) {
                msgs.push(m);
            }
            used += n;
        }
        self.pending.drain(..used);
        msgs
    }

    /// Waits for `Release`, the end of stdin, or `limit`, whichever comes first.
    pub fn wait_release(&mut self, limit: Duration) {
        let until = Instant::now() + limit;
        while self.input_open {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            let mut fds = [pollfd(self.input.as_raw_fd())];
            if poll(&mut fds, left).is_err() {
                return;
            }
            if fds[0].revents != 0 && self.read_messages().contains(&ToStub::Release) {
                return;
            }
        }
    }
}

/// Paths the script gets.
struct Files {
    script: PathBuf,
    output: PathBuf,
    sensitive: PathBuf,
}

/// Runs the request's script to its end and sends every frame up to `Exit`.
/// An `Err` is the stub's own failure (the caller reports it as `StubError`).
pub fn run(chan: &mut Channel, req: &Request) -> Result<(), String> {
    set_loginuid(req.uid);
    let files = prepare(req)?;
    let mut cmd = command(req, &files, chan)?;
    let status = match cmd.spawn() {
        Ok(child) => {
            let group = Group(child.id() as libc::pid_t);
            let status = supervise(chan, req, &files, child, &group)?;
            drop(group);
            status
        }
        Err(e) => {
            let program = req.interpreter.first().map_or("", String::as_str);
            chan.send(&FromStub::Stderr(
                format!("krill: cannot run interpreter `{program}`: {e}\n").into_bytes(),
            ))?;
            ExitStatus::Code(if e.kind() == io::ErrorKind::NotFound {
                127
            } else {
                126
            })
        }
    };
    // Nothing of the task may still write to the files while they are read.
    let ended = end_every_process(END_WAIT);
    let cap = req.output_file_cap;
    let read = |path: &Path, name: &str| match &ended {
        Ok(()) => read_capped(path, cap, name).map_err(|e| e.to_string()),
        Err(why) => Err(format!("{name} was not read: {why}")),
    };
    chan.send(&FromStub::Outputs(read(&files.output, "KRILL_OUTPUT")))?;
    chan.send(&FromStub::SensitiveFinal(read(
        &files.sensitive,
        "KRILL_SENSITIVE_OUTPUT",
    )))?;
    chan.send(&FromStub::Exit(status))
}

/// Writes the script file and creates the empty output files, in the output
/// dir: the stub owns them; the dir's group (the script's gid, inherited
/// through its setgid bit) lets the script read the script and write the
/// output files, and nothing else.
fn prepare(req: &Request) -> Result<Files, String> {
    let files = Files {
        script: Path::new(&req.output_dir).join(SCRIPT_NAME),
        output: Path::new(&req.output_dir).join("output"),
        sensitive: Path::new(&req.output_dir).join("sensitive"),
    };
    let same_user = dropped(req);
    let create = |path: &Path, content: &[u8], mode: u32| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| format!("creating {}: {e}", path.display()))?;
        f.write_all(content)
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        // Explicitly, past the umask. When the stub already is the script's
        // user (a container set up the old way), the owner bits are the ones
        // that count.
        let mode = if same_user {
            0o600 | (mode & 0o044)
        } else {
            mode
        };
        f.set_permissions(std::fs::Permissions::from_mode(mode))
            .map_err(|e| format!("chmod {}: {e}", path.display()))
    };
    create(&files.script, req.script.as_bytes(), 0o644)?;
    create(&files.output, b"", 0o660)?;
    create(&files.sensitive, b"", 0o660)?;
    Ok(files)
}

/// Whether the stub already runs as the script's user (nothing to drop).
fn dropped(req: &Request) -> bool {
    // SAFETY: these getters cannot fail and have no preconditions.
    unsafe {
        libc::getuid() == req.uid
            && libc::geteuid() == req.uid
            && libc::getgid() == req.gid
            && libc::getegid() == req.gid
    }
}

/// The script's command: clean environment, own process group, stdin /dev/null.
fn command(req: &Request, files: &Files, chan: &mut Channel) -> Result<Command, String> {
    let (program, args) = match req.interpreter.split_first() {
        Some(split) => split,
        None => return Err("the request has an empty interpreter".into()),
    };
    if req.uid == 0 {
        return Err("refusing to run the script as root".into());
    }
    let mut cmd = Command::new(program);
    if !dropped(req) {
        // Applied by std in the child before it changes directory (the work
        // dir is the script user's own, 0700): setgroups([]), setgid, setuid.
        cmd.uid(req.uid).gid(req.gid);
    }
    let (uid, gid, drop) = (req.uid, req.gid, !dropped(req));
    // SAFETY: the closure runs between fork and exec and only makes
    // async-signal-safe calls (getuid/getgid/getgroups/setuid/prctl) on
    // integers copied in; it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            // Checked, not assumed: the script runs as its user with no
            // supplementary group and no way back.
            if libc::getuid() != uid
                || libc::geteuid() != uid
                || libc::getgid() != gid
                || libc::getegid() != gid
                || (drop && libc::getgroups(0, std::ptr::null_mut()) != 0)
            {
                return Err(io::Error::other("privileges were not dropped"));
            }
            if libc::setuid(0) == 0 {
                return Err(io::Error::other("privileges could be regained"));
            }
            if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd.args(args)
        .arg(&files.script)
        .env_clear()
        .env("PATH", &req.path)
        .env("HOME", &req.work_dir);
    for (name, value) in &req.env {
        let bad_name = name.is_empty() || name.contains(['=', '\0']) || name.starts_with("KRILL_");
        if bad_name || value.contains('\0') {
            // Names only: values may be secrets.
            chan.send(&FromStub::Stderr(
                format!("krill: environment variable `{name}` ignored (invalid name or value)\n")
                    .into_bytes(),
            ))?;
            continue;
        }
        cmd.env(name, value);
    }
    cmd.env("KRILL_OUTPUT", &files.output)
        .env("KRILL_SENSITIVE_OUTPUT", &files.sensitive)
        .env("KRILL_TASK_ID", &req.task_id)
        .current_dir(&req.work_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    Ok(cmd)
}

/// Watches `$KRILL_SENSITIVE_OUTPUT` and sends its content when it changed.
struct SensitiveWatch<'a> {
    path: &'a Path,
    cap: u64,
    key: Option<[i64; 8]>,
    sent: Vec<u8>,
}

impl SensitiveWatch<'_> {
    fn check(&mut self, chan: &mut Channel) -> Result<(), String> {
        let key = std::fs::symlink_metadata(self.path).ok().map(|m| {
            [
                m.dev() as i64,
                m.ino() as i64,
                m.size() as i64,
                m.mtime(),
                m.mtime_nsec(),
                m.ctime(),
                m.ctime_nsec(),
                i64::from(m.mode()),
            ]
        });
        if key == self.key {
            return Ok(());
        }
        self.key = key;
        // Unreadable (too big, not a file): nothing can be sent; the final read reports why.
        if let Ok(content) = read_capped(self.path, self.cap, "KRILL_SENSITIVE_OUTPUT") {
            if content != self.sent {
                chan.send(&FromStub::Sensitive(content.clone()))?;
                self.sent = content;
            }
        }
        Ok(())
    }
}

/// The poll loop; returns how the script ended.
fn supervise(
    chan: &mut Channel,
    req: &Request,
    files: &Files,
    mut child: Child,
    group: &Group,
) -> Result<ExitStatus, String> {
    let mut pipes: [Option<(File, bool)>; 2] = [
        child
            .stdout
            .take()
            .map(|p| (File::from(OwnedFd::from(p)), false)),
        child
            .stderr
            .take()
            .map(|p| (File::from(OwnedFd::from(p)), true)),
    ];
    let mut pidfd = pidfd_open(child.id());
    let mut watch = SensitiveWatch {
        path: &files.sensitive,
        cap: req.output_file_cap,
        key: None,
        sent: Vec::new(),
    };
    watch.check(chan)?;
    let mut status: Option<ExitStatus> = None;
    let mut drain_until = None;
    let mut term_at: Option<Instant> = None;
    let mut killed = false;
    let mut next_watch = Instant::now() + SENSITIVE_POLL;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let now = Instant::now();
        if let (Some(st), Some(until)) = (status, drain_until) {
            if pipes.iter().all(Option::is_none) {
                return Ok(st);
            }
            if now >= until {
                kill_all();
                chan.send(&FromStub::Stderr(
                    b"krill: processes started by the script kept its stdout/stderr open after \
                      it exited and SIGKILL; their further output is discarded\n"
                        .to_vec(),
                ))?;
                return Ok(st);
            }
        }
        if let Some(t) = term_at {
            if !killed && status.is_none() && now >= t + TERM_GRACE {
                group.signal(libc::SIGKILL);
                kill_all();
                killed = true;
            }
        }

        // Wait for something to happen.
        let mut wake = next_watch;
        if let Some(t) = term_at.filter(|_| !killed) {
            wake = wake.min(t + TERM_GRACE);
        }
        if let Some(u) = drain_until {
            wake = wake.min(u);
        }
        if status.is_none() && pidfd.is_none() && pipes.iter().all(Option::is_none) {
            wake = wake.min(now + Duration::from_millis(5));
        }
        let mut fds = Vec::with_capacity(4);
        let stdin_slot = chan.input_open.then(|| {
            fds.push(pollfd(chan.input.as_raw_fd()));
            fds.len() - 1
        });
        let mut pipe_slots = [None, None];
        for (i, p) in pipes.iter().enumerate() {
            if let Some((f, _)) = p {
                fds.push(pollfd(f.as_raw_fd()));
                pipe_slots[i] = Some(fds.len() - 1);
            }
        }
        let pid_slot = pidfd.as_ref().filter(|_| status.is_none()).map(|fd| {
            fds.push(pollfd(fd.as_raw_fd()));
            fds.len() - 1
        });
        poll(&mut fds, wake.saturating_duration_since(now)).map_err(|e| format!("poll: {e}"))?;

        if Instant::now() >= next_watch {
            watch.check(chan)?;
            next_watch = Instant::now() + SENSITIVE_POLL;
        }
        if stdin_slot.is_some_and(|i| fds[i].revents != 0) {
            let mut msgs = chan.read_messages();
            if !chan.input_open {
                // The worker is gone (its attach connection closed stdin): nobody
                // will read the output, so stop the script as if told to.
                msgs.push(ToStub::Terminate);
            }
            for msg in msgs {
                if msg != ToStub::Terminate {
                    continue;
                }
                if status.is_some() {
                    // Already exited: stop waiting for background output.
                    drain_until = Some(Instant::now());
                } else if term_at.is_none() {
                    group.signal(libc::SIGTERM);
                    term_at = Some(Instant::now());
                }
            }
        }
        for (slot, pipe) in pipe_slots.iter().zip(pipes.iter_mut()) {
            let Some(i) = *slot else { continue };
            if fds[i].revents == 0 {
                continue;
            }
            let Some((file, is_err)) = pipe else { continue };
            let is_err = *is_err;
            match file.read(&mut buf) {
                Ok(0) | Err(_) => *pipe = None,
                Ok(n) => {
                    watch.check(chan)?;
                    let chunk = buf[..n].to_vec();
                    chan.send(&if is_err {
                        FromStub::Stderr(chunk)
                    } else {
                        FromStub::Stdout(chunk)
                    })?;
                }
            }
        }
        let check_exit = match pid_slot {
            Some(i) => fds[i].revents != 0,
            None => status.is_none(),
        };
        if check_exit {
            if let Some(st) = child.try_wait().map_err(|e| format!("waitpid: {e}"))? {
                status = Some(match st.signal() {
                    Some(sig) => ExitStatus::Signal(sig),
                    None => ExitStatus::Code(st.code().unwrap_or(-1)),
                });
                pidfd = None;
                // The script is over: so is everything it started (setsid or
                // not). What they wrote to the pipes is still read.
                kill_all();
                drain_until = Some(Instant::now() + DRAIN_GRACE);
            }
        }
    }
}

fn pollfd(fd: RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}

/// poll(2), retried on EINTR.
fn poll(fds: &mut [libc::pollfd], timeout: Duration) -> io::Result<()> {
    // Round up so a wake-up time is never missed by a sub-millisecond rest.
    let ms = timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int;
    loop {
        // SAFETY: `fds` is a valid, exclusively borrowed slice of pollfd for the
        // duration of the call, and its length is passed alongside.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, ms) };
        if rc >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// A pidfd for the child (readable once it exits), if the kernel has pidfd_open.
fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes two integers and returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: the syscall succeeded, so `fd` is a fresh descriptor that nothing
    // else owns (pidfds are created close-on-exec).
    Some(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}
