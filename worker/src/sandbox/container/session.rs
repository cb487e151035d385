//! One launched container: hand the task to krill-stub, stream its frames into
//! events, enforce the deadline and cancellation, and decide how the script ended.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::errors::Error as DockerError;
use bollard::query_parameters::{
    EventsOptionsBuilder, KillContainerOptionsBuilder, StatsOptionsBuilder,
    WaitContainerOptionsBuilder,
};
use bollard::Docker;
use broker::protocol::{Enforcement, Stream, Usage};
use bytes::Bytes;
use futures_util::{Stream as FutStream, StreamExt};
use stub::{ExitStatus, FrameDecoder, FromStub, Request, ToStub};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::cleanup::ContainerGuard;
use super::settings::{Settings, Tuning, OUTPUT_DIR, WORK_DIR};
use super::usage;
use crate::sandbox::{Event, Exit, Outcome, SandboxError, Spec};

/// Largest output chunk the stub sends in one frame.
const STUB_CHUNK: u64 = 64 * 1024;
/// Bytes of the stub's own stderr kept for error messages.
const STUB_STDERR_KEEP: usize = 4096;
/// Bound on small control calls to the engine at the end of a run.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(5);
/// How long after a container's SIGKILL the engine's `oom` event may still come.
const LATE_OOM_WAIT: Duration = Duration::from_secs(1);

type Output = Pin<Box<dyn FutStream<Item = Result<LogOutput, DockerError>> + Send>>;
type Input = Pin<Box<dyn AsyncWrite + Send>>;

/// How long each step of [`ContainerSandbox::launch`](super::ContainerSandbox::launch) took.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct LaunchTimings {
    /// Allow-list check and image inspection (and pull, if any).
    pub image: Duration,
    pub create: Duration,
    pub attach: Duration,
    pub start: Duration,
}

/// A created, attached and started container whose stub waits for its task.
/// Dropping it removes the container in the background.
pub struct Launched {
    pub(super) guard: ContainerGuard,
    pub(super) docker: Docker,
    pub(super) input: Input,
    pub(super) output: Output,
    /// `PATH` for the script, from the image.
    pub(super) path: String,
    /// The image's other environment variables (defaults under the task's env).
    pub(super) image_env: Vec<(String, String)>,
    /// The uid and gid the stub drops to for the script.
    pub(super) script_user: (u32, u32),
    pub(super) settings: Arc<Settings>,
    pub(super) enforcement: Enforcement,
    pub(super) timings: LaunchTimings,
}

impl std::fmt::Debug for Launched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Launched")
            .field("id", &self.guard.id())
            .field("timings", &self.timings)
            .finish_non_exhaustive()
    }
}

/// Why the loop stopped.
#[derive(Debug, Clone, PartialEq)]
enum End {
    Exit(ExitStatus),
    StubError(String),
    /// The stream ended between frames without an exit frame (the stub or the
    /// container died).
    StreamEnded,
    /// The stream ended inside a frame: the stub died while writing one. Expected
    /// when the worker stopped the container; otherwise a sandbox error.
    Truncated(String),
    Broken(String),
    /// Terminate was sent and the grace ran out.
    GraceOver,
}

/// What the worker itself did to the task, decided from facts that do not depend
/// on which branch of the loop's `select!` ran first: the token and the clock at
/// the moment the loop ended count as much as a branch that fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Stopped {
    /// The cancel token fired (whether or not Terminate went out for it).
    cancelled: bool,
    /// The deadline passed before the worker learned how the script ended.
    timed_out: bool,
}

/// The script (stub's frame) or the whole container (exit code 137) ended by
/// SIGKILL: with the memory limit reached, that kill is the limit's.
fn killed_by_sigkill(end: &End, exit_code: Option<i64>) -> bool {
    match end {
        End::Exit(ExitStatus::Signal(9)) => true,
        End::StreamEnded => exit_code == Some(137),
        _ => false,
    }
}

/// How the script ended, by the rule: the worker's cancel, then the worker's
/// deadline, then an OOM kill in the container, then the stub's exit frame, then
/// the container's own exit code. `Err` is a sandbox error's text.
///
/// A script that exits 0 after an OOM kill in one of its children succeeded
/// (it recovered). Without an exit frame, a container exit code of 128 + n is
/// docker-init's report of its child (the stub) killed by signal n; the stub
/// runs as the task's user, so a script can kill it (`kill -9 -1`).
fn decide(stopped: Stopped, oom: bool, end: &End, exit_code: Option<i64>) -> Result<Exit, String> {
    if stopped.cancelled {
        return Ok(Exit::Cancelled);
    }
    if stopped.timed_out {
        return Ok(Exit::TimedOut);
    }
    match end {
        End::Exit(ExitStatus::Code(0)) => Ok(Exit::Code(0)),
        _ if oom => Ok(Exit::OomKilled),
        End::Exit(ExitStatus::Code(c)) => Ok(Exit::Code(*c)),
        End::Exit(ExitStatus::Signal(s)) => Ok(Exit::Signal(*s)),
        End::StubError(text) => Err(format!("krill-stub failed: {text}")),
        End::Truncated(text) | End::Broken(text) => Err(text.clone()),
        End::StreamEnded => match exit_code {
            Some(c @ 129..=192) => Ok(Exit::Signal(i32::try_from(c - 128).unwrap_or(9))),
            Some(c) => Ok(Exit::Code(i32::try_from(c).unwrap_or(i32::MAX))),
            None => Err("the container ended without reporting how the script ended".into()),
        },
        // Only after a stop, which is decided above.
        End::GraceOver => Ok(Exit::TimedOut),
    }
}

impl Launched {
    pub fn id(&self) -> &str {
        self.guard.id()
    }

    pub fn timings(&self) -> LaunchTimings {
        self.timings
    }

    /// Runs `spec` in this container, then removes it in the background.
    pub async fn run(
        self,
        spec: &Spec,
        events: mpsc::Sender<Event>,
        cancel: CancellationToken,
    ) -> Result<Outcome, SandboxError> {
        let (result, guard) = self.run_and_keep(spec, events, cancel).await;
        guard.remove_later();
        result
    }

    /// Runs `spec` in this container and hands back the guard, so the caller
    /// chooses when to remove it (dropping the guard removes it in the background).
    pub async fn run_and_keep(
        self,
        spec: &Spec,
        events: mpsc::Sender<Event>,
        cancel: CancellationToken,
    ) -> (Result<Outcome, SandboxError>, ContainerGuard) {
        let Launched {
            guard,
            docker,
            mut input,
            output,
            path,
            image_env,
            script_user,
            settings,
            enforcement,
            ..
        } = self;
        let id = guard.id().to_string();
        let run = Run {
            docker: &docker,
            id: &id,
            tuning: &settings.tuning,
        };
        let result = run
            .drive(
                &mut input,
                output,
                (path, image_env, script_user),
                spec,
                events,
                cancel,
            )
            .await
            .map(|(exit, outputs, sensitive, usage)| Outcome {
                exit,
                outputs,
                sensitive,
                usage,
                sandbox_id: id.clone(),
                enforcement,
                landlock: None,
            });
        (result, guard)
    }
}

struct Run<'a> {
    docker: &'a Docker,
    id: &'a str,
    tuning: &'a Tuning,
}

type FileResult = Result<Bytes, String>;

impl Run<'_> {
    fn docker_err(&self, what: &str) -> impl FnOnce(DockerError) -> SandboxError + '_ {
        let what = what.to_string();
        move |e| SandboxError::engine(format!("{what} (container {})", short(self.id)))(e)
    }

    async fn drive(
        &self,
        input: &mut Input,
        mut output: Output,
        (path, image_env, (uid, gid)): (String, Vec<(String, String)>, (u32, u32)),
        spec: &Spec,
        events: mpsc::Sender<Event>,
        cancel: CancellationToken,
    ) -> Result<(Exit, FileResult, FileResult, Usage), SandboxError> {
        // The image's variables first, so that the task's own override them.
        let mut env: Vec<(String, String)> = image_env
            .into_iter()
            .filter(|(name, _)| !spec.env.iter().any(|(n, _)| n == name))
            .collect();
        env.extend(spec.env.iter().cloned());
        let request = Request {
            task_id: spec.task_id.clone(),
            script: spec.script.clone(),
            interpreter: spec.interpreter.clone(),
            env,
            path,
            output_file_cap: spec.limits.output_file_bytes,
            work_dir: WORK_DIR.to_string(),
            output_dir: OUTPUT_DIR.to_string(),
            uid,
            gid,
        };
        let mut frame = Vec::new();
        ToStub::Request(Box::new(request))
            .encode(&mut frame)
            .map_err(|e| SandboxError::Docker(format!("encoding the task for the stub: {e}")))?;
        let handed = Instant::now();
        send(input, &frame)
            .await
            .map_err(|e| SandboxError::Docker(format!("sending the task to the container: {e}")))?;
        let deadline = handed + spec.limits.timeout;

        let max_frame = spec
            .limits
            .output_file_bytes
            .max(STUB_CHUNK)
            .saturating_add(16);
        let mut decoder = FrameDecoder::new(u32::try_from(max_frame).unwrap_or(u32::MAX));
        let mut pending: Option<Event> = None;
        let mut events_open = true;
        let mut stop: Option<(Exit, Instant)> = None;
        let mut outputs = None;
        let mut sensitive = None;
        let mut stub_stderr = Vec::new();
        let end = loop {
            // Hand out what is already buffered before reading more.
            if pending.is_none() {
                match decoder.next_message() {
                    Err(e) => break End::Broken(format!("bad frame from krill-stub: {e}")),
                    Ok(Some(msg)) => {
                        match msg {
                            FromStub::Stdout(b) => {
                                pending = Some(Event::Output(Stream::Stdout, Bytes::from(b)))
                            }
                            FromStub::Stderr(b) => {
                                pending = Some(Event::Output(Stream::Stderr, Bytes::from(b)))
                            }
                            FromStub::Sensitive(b) => {
                                pending = Some(Event::Sensitive(Bytes::from(b)))
                            }
                            FromStub::Outputs(r) => outputs = Some(r.map(Bytes::from)),
                            FromStub::SensitiveFinal(r) => sensitive = Some(r.map(Bytes::from)),
                            FromStub::Exit(status) => break End::Exit(status),
                            FromStub::StubError(text) => break End::StubError(text),
                        }
                        if !events_open {
                            pending = None;
                        }
                        continue;
                    }
                    Ok(None) => {}
                }
            }
            let kill_at = stop.map(|(_, at)| at);
            tokio::select! {
                biased;
                _ = cancel.cancelled(), if stop.is_none() => {
                    stop = Some((Exit::Cancelled, Instant::now() + self.tuning.kill_grace));
                    self.terminate(input).await;
                }
                _ = sleep_until(deadline), if stop.is_none() => {
                    stop = Some((Exit::TimedOut, Instant::now() + self.tuning.kill_grace));
                    self.terminate(input).await;
                }
                _ = sleep_until(kill_at.unwrap_or(deadline)), if kill_at.is_some() => {
                    break End::GraceOver;
                }
                permit = events.reserve(), if pending.is_some() => match permit {
                    Ok(permit) => {
                        if let Some(event) = pending.take() {
                            permit.send(event);
                        }
                    }
                    // Nobody listens any more: keep running, drop the events.
                    Err(_) => {
                        events_open = false;
                        pending = None;
                    }
                },
                item = output.next(), if pending.is_none() => match item {
                    Some(Ok(LogOutput::StdOut { message })) => decoder.push(&message),
                    Some(Ok(LogOutput::StdErr { message })) => {
                        let room = STUB_STDERR_KEEP.saturating_sub(stub_stderr.len());
                        stub_stderr.extend_from_slice(&message[..message.len().min(room)]);
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => break End::Broken(format!("reading from the container: {e}")),
                    None => match decoder.finish() {
                        Ok(()) => break End::StreamEnded,
                        Err(e) => break End::Truncated(format!("bad frame from krill-stub: {e}")),
                    },
                },
            }
        };
        // Decided now, not by which branch above won: under load the end of the
        // stream (the container died, the stub sent its exit frame) can be seen
        // before the deadline's or the token's branch had its turn.
        let ended_at = Instant::now();
        let stopped = Stopped {
            cancelled: matches!(stop, Some((Exit::Cancelled, _))) || cancel.is_cancelled(),
            timed_out: matches!(stop, Some((Exit::TimedOut, _))) || ended_at >= deadline,
        };
        debug!(
            container_id = %short(self.id),
            run_ms = handed.elapsed().as_millis() as u64,
            ?stopped,
            worker_stop = ?stop.map(|(e, _)| e),
            ?end,
            "task ended in container"
        );
        if !stub_stderr.is_empty() && events_open {
            // Logged by the runner, which knows every value to mask.
            let _ = events
                .send(Event::Diagnostic(Bytes::from(stub_stderr.clone())))
                .await;
        }

        // The container still runs unless it died: read its cgroup before it goes.
        let accounting = usage::Accounting::of_runtime(self.tuning.runtime.as_deref());
        let reading = usage::read_cgroup(&self.tuning.cgroup_root, self.id, accounting);
        let usage = match &reading {
            Some(r) => r.usage.clone(),
            None => self.stats_usage().await.unwrap_or_default(),
        };
        let hit_limit = reading.as_ref().is_some_and(|r| r.hit_limit);
        let mut oom = reading.and_then(|r| r.oom_kills).map(|n| n > 0);
        match &end {
            End::Exit(_) => {
                let mut frame = Vec::new();
                if ToStub::Release.encode(&mut frame).is_ok() {
                    let _ = send(input, &frame).await;
                }
            }
            End::GraceOver => self.kill().await,
            _ => {}
        }
        let mut exit_code = None;
        if matches!(end, End::StreamEnded) {
            exit_code = self.wait_exit_code().await;
        }
        if oom.is_none() || !matches!(end, End::Exit(_)) {
            let state = timeout(
                CONTROL_TIMEOUT,
                self.docker.inspect_container(self.id, None),
            )
            .await
            .ok()
            .and_then(Result::ok)
            .and_then(|i| i.state);
            if let Some(state) = state {
                if state.oom_killed == Some(true) {
                    oom = Some(true);
                }
                exit_code = exit_code.or(state.exit_code.filter(|_| state.running == Some(false)));
            }
        }
        let mut oom = oom.unwrap_or(false) || (hit_limit && killed_by_sigkill(&end, exit_code));
        if !oom && matches!(end, End::StreamEnded) && exit_code == Some(137) {
            // The whole container was SIGKILLed (under gVisor the host kernel's
            // OOM kill takes the sentry, so the stub goes with the script) and
            // its cgroup is gone. The engine reports the OOM as an event that
            // may come after the exit (measured: `oom` 28 ms after `die`, 1 run
            // in 10, with `OOMKilled` still false at the inspect above).
            oom = self.oom_event_since(handed).await;
        }

        let exit = decide(stopped, oom, &end, exit_code).map_err(|text| {
            SandboxError::Docker(match &end {
                End::StubError(_) | End::StreamEnded => format!(
                    "container {}: {text}{}",
                    short(self.id),
                    stderr_note(&stub_stderr)
                ),
                _ => text,
            })
        })?;
        if stopped != Stopped::default() && matches!(end, End::Truncated(_) | End::Broken(_)) {
            debug!(container_id = %short(self.id), ?end, "stream cut after the worker stopped the task");
        }
        let lost = |name: &str| Err(format!("{name} was not collected: the task was killed"));
        Ok((
            exit,
            outputs.unwrap_or_else(|| lost("KRILL_OUTPUT")),
            sensitive.unwrap_or_else(|| lost("KRILL_SENSITIVE_OUTPUT")),
            usage,
        ))
    }

    /// Asks the stub to stop the script (SIGTERM, then SIGKILL after its grace).
    async fn terminate(&self, input: &mut Input) {
        let mut frame = Vec::new();
        if ToStub::Terminate.encode(&mut frame).is_ok() {
            if let Err(e) = send(input, &frame).await {
                debug!(container_id = %short(self.id), error = %e, "could not send terminate");
            }
        }
    }

    async fn kill(&self) {
        let options = KillContainerOptionsBuilder::default()
            .signal("SIGKILL")
            .build();
        match timeout(
            CONTROL_TIMEOUT,
            self.docker.kill_container(self.id, Some(options)),
        )
        .await
        {
            Ok(Ok(())) => {}
            // Not running any more, or gone: nothing left to kill.
            Ok(Err(DockerError::DockerResponseServerError {
                status_code: 404 | 409,
                ..
            })) => {}
            Ok(Err(e)) => {
                warn!(container_id = %short(self.id), error = %e, "failed to kill container")
            }
            Err(_) => warn!(container_id = %short(self.id), "killing the container timed out"),
        }
    }

    /// One-shot stats from the engine, for when the cgroup files are not visible.
    async fn stats_usage(&self) -> Option<Usage> {
        let options = StatsOptionsBuilder::default()
            .stream(false)
            .one_shot(true)
            .build();
        let mut stats = self.docker.stats(self.id, Some(options));
        let first = timeout(CONTROL_TIMEOUT, stats.next()).await.ok()??;
        first
            .map_err(self.docker_err("reading stats"))
            .map(|s| usage::from_stats(&s))
            .ok()
    }

    /// Whether the engine reported an OOM kill of the container since `since`,
    /// waiting up to [`LATE_OOM_WAIT`] for an event that lags the container's exit.
    async fn oom_event_since(&self, since: Instant) -> bool {
        let unix = |t: std::time::SystemTime| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map(|d| format!("{}.{:09}", d.as_secs(), d.subsec_nanos()))
                .unwrap_or_default()
        };
        let now = std::time::SystemTime::now();
        let started = now - since.elapsed() - Duration::from_secs(1);
        let filters = std::collections::HashMap::from([
            ("container", vec![self.id]),
            ("type", vec!["container"]),
            ("event", vec!["oom"]),
        ]);
        let options = EventsOptionsBuilder::default()
            .since(&unix(started))
            .until(&unix(now + LATE_OOM_WAIT))
            .filters(&filters)
            .build();
        let mut events = self.docker.events(Some(options));
        let seen = matches!(
            timeout(LATE_OOM_WAIT + CONTROL_TIMEOUT, events.next()).await,
            Ok(Some(Ok(_)))
        );
        debug!(container_id = %short(self.id), seen, "looked for a late oom event");
        seen
    }

    /// The container's exit code once it stopped (it may lag the end of the stream).
    async fn wait_exit_code(&self) -> Option<i64> {
        let options = WaitContainerOptionsBuilder::default()
            .condition("not-running")
            .build();
        let mut wait = self.docker.wait_container(self.id, Some(options));
        match timeout(CONTROL_TIMEOUT, wait.next()).await.ok()?? {
            Ok(r) => Some(r.status_code),
            Err(DockerError::DockerContainerWaitError { code, .. }) => Some(code),
            Err(_) => None,
        }
    }
}

async fn send(input: &mut Input, frame: &[u8]) -> std::io::Result<()> {
    let write = async {
        input.write_all(frame).await?;
        input.flush().await
    };
    match timeout(CONTROL_TIMEOUT, write).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "writing to the container's stdin timed out",
        )),
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

fn stderr_note(stderr: &[u8]) -> String {
    if stderr.is_empty() {
        String::new()
    } else {
        format!("; stub stderr: {}", String::from_utf8_lossy(stderr).trim())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONE: Stopped = Stopped {
        cancelled: false,
        timed_out: false,
    };
    const DEADLINE: Stopped = Stopped {
        cancelled: false,
        timed_out: true,
    };
    const CANCEL: Stopped = Stopped {
        cancelled: true,
        timed_out: false,
    };
    const BOTH: Stopped = Stopped {
        cancelled: true,
        timed_out: true,
    };

    fn truncated() -> End {
        End::Truncated("bad frame from krill-stub: stream ended inside a frame".into())
    }

    #[test]
    fn a_stream_cut_inside_a_frame_after_the_worker_stopped_the_task_is_that_stop() {
        assert_eq!(
            decide(DEADLINE, false, &truncated(), Some(137)),
            Ok(Exit::TimedOut)
        );
        assert_eq!(
            decide(CANCEL, false, &truncated(), None),
            Ok(Exit::Cancelled)
        );
        let broken = End::Broken("reading from the container: reset".into());
        assert_eq!(decide(DEADLINE, false, &broken, None), Ok(Exit::TimedOut));
    }

    #[test]
    fn a_stream_cut_inside_a_frame_nobody_asked_for_is_a_sandbox_error() {
        match decide(NONE, false, &truncated(), Some(137)) {
            Err(e) => assert!(e.contains("inside a frame"), "{e}"),
            Ok(exit) => panic!("expected a sandbox error, got {exit:?}"),
        }
    }

    #[test]
    fn cancel_beats_deadline_beats_oom_beats_the_exit_frame() {
        let killed = End::Exit(ExitStatus::Signal(9));
        assert_eq!(decide(BOTH, true, &killed, None), Ok(Exit::Cancelled));
        assert_eq!(decide(DEADLINE, true, &killed, None), Ok(Exit::TimedOut));
        assert_eq!(decide(NONE, true, &killed, None), Ok(Exit::OomKilled));
        assert_eq!(decide(NONE, false, &killed, None), Ok(Exit::Signal(9)));
        // The exit frame beats the container's exit code.
        let code = End::Exit(ExitStatus::Code(3));
        assert_eq!(decide(NONE, false, &code, Some(137)), Ok(Exit::Code(3)));
    }

    #[test]
    fn an_exit_frame_seen_after_the_deadline_or_cancel_does_not_win() {
        // The script was SIGKILLed (by the stub's grace, or its shell's child) and
        // the frame reached the loop before the deadline's branch ran.
        for end in [
            End::Exit(ExitStatus::Code(137)),
            End::Exit(ExitStatus::Signal(9)),
            End::Exit(ExitStatus::Code(0)),
            End::StreamEnded,
        ] {
            assert_eq!(decide(DEADLINE, false, &end, Some(137)), Ok(Exit::TimedOut));
            assert_eq!(decide(CANCEL, false, &end, Some(137)), Ok(Exit::Cancelled));
        }
    }

    #[test]
    fn a_script_that_recovered_from_an_oom_kill_in_a_child_succeeded() {
        let ok = End::Exit(ExitStatus::Code(0));
        assert_eq!(decide(NONE, true, &ok, None), Ok(Exit::Code(0)));
    }

    #[test]
    fn a_sigkill_at_the_memory_limit_is_the_limits_whoever_sent_it() {
        assert!(killed_by_sigkill(&End::Exit(ExitStatus::Signal(9)), None));
        assert!(killed_by_sigkill(&End::StreamEnded, Some(137)));
        assert!(!killed_by_sigkill(&End::Exit(ExitStatus::Signal(15)), None));
        assert!(!killed_by_sigkill(&End::Exit(ExitStatus::Code(137)), None));
        assert!(!killed_by_sigkill(&End::StreamEnded, Some(143)));
    }

    #[test]
    fn without_an_exit_frame_docker_init_codes_over_128_are_signals() {
        let end = End::StreamEnded;
        assert_eq!(decide(NONE, false, &end, Some(137)), Ok(Exit::Signal(9)));
        assert_eq!(decide(NONE, false, &end, Some(139)), Ok(Exit::Signal(11)));
        assert_eq!(decide(NONE, false, &end, Some(2)), Ok(Exit::Code(2)));
        assert_eq!(decide(NONE, false, &end, Some(128)), Ok(Exit::Code(128)));
        assert_eq!(decide(NONE, true, &end, Some(137)), Ok(Exit::OomKilled));
        assert!(decide(NONE, false, &end, None).is_err());
    }

    #[test]
    fn stub_errors_stay_sandbox_errors_unless_the_worker_stopped_the_task() {
        let end = End::StubError("reading the request: bad json".into());
        assert!(decide(NONE, false, &end, Some(1)).is_err());
        assert_eq!(decide(DEADLINE, false, &end, Some(1)), Ok(Exit::TimedOut));
    }
}
