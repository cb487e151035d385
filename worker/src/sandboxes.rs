//! The sandboxes this worker runs, behind one handle the runner and daemon use.

use std::sync::Arc;

use broker::protocol::SandboxKind;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::sandbox::container::warm::{WarmConfig, WarmPool};
use crate::sandbox::container::ContainerSandbox;
use crate::sandbox::process::ProcessSandbox;
use crate::sandbox::{Event, Outcome, Sandbox, SandboxError, Spec};

/// The enabled sandboxes (cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct Sandboxes {
    pub process: Option<Arc<ProcessSandbox>>,
    pub container: Option<Arc<ContainerSandbox>>,
    /// Pre-started containers (`--prestart`), when the container sandbox is on.
    pub warm: Option<WarmPool>,
}

impl Sandboxes {
    /// Runs `spec` in the sandbox of `kind`.
    pub async fn run(
        &self,
        kind: SandboxKind,
        spec: Spec,
        events: mpsc::Sender<Event>,
        cancel: CancellationToken,
    ) -> Result<Outcome, SandboxError> {
        match kind {
            SandboxKind::Process => match &self.process {
                Some(s) => s.run(spec, events, cancel).await,
                None => Err(SandboxError::Setup(
                    "the process sandbox is not enabled on this worker".into(),
                )),
            },
            SandboxKind::Container => match &self.container {
                Some(s) => {
                    if let Some(warm) = &self.warm {
                        if let Some(launched) = warm.take(&spec).await {
                            return launched.run(&spec, events, cancel).await;
                        }
                    }
                    s.run(spec, events, cancel).await
                }
                None => Err(SandboxError::Docker(
                    "the container sandbox is not enabled on this worker".into(),
                )),
            },
        }
    }

    /// Removes leftovers of crashed workers in every enabled sandbox; returns the count.
    pub async fn sweep(&self) -> usize {
        let mut n = 0;
        if let Some(s) = &self.process {
            n += log_sweep("process", s.sweep().await);
        }
        if let Some(s) = &self.container {
            n += log_sweep("container", s.sweep().await);
        }
        n
    }

    /// Whether every enabled sandbox's backend answers.
    pub async fn ready(&self) -> bool {
        let p = match &self.process {
            Some(s) => s.ready().await,
            None => true,
        };
        let c = match &self.container {
            Some(s) => s.ready().await,
            None => true,
        };
        p && c
    }

    /// Starts pre-starting `per_image` containers per allowed image with the pool's
    /// default limits (after the start-up sweep; nothing without the container sandbox).
    pub fn start_prestart(
        &mut self,
        per_image: u32,
        defaults: crate::sandbox::Effective,
        worker_id: &str,
    ) {
        if let (Some(c), true) = (&self.container, per_image > 0) {
            self.warm = Some(WarmPool::start(
                c.clone(),
                WarmConfig {
                    per_image: per_image as usize,
                    defaults,
                    worker_id: worker_id.to_string(),
                },
            ));
        }
    }

    /// Sandboxes prestarted and waiting for a task, by kind.
    pub fn prestarted(&self) -> Vec<(SandboxKind, usize)> {
        let mut out = Vec::new();
        if let Some(s) = &self.process {
            out.push((SandboxKind::Process, s.ready_helpers()));
        }
        if let Some(w) = &self.warm {
            out.push((SandboxKind::Container, w.ready_total()));
        }
        out
    }

    /// Removes pre-started containers, then waits for background clean-up.
    pub async fn close(&self) {
        if let Some(w) = &self.warm {
            w.close().await;
        }
        if let Some(s) = &self.process {
            s.close().await;
        }
        if let Some(s) = &self.container {
            s.close().await;
        }
    }
}

fn log_sweep(kind: &str, r: Result<usize, SandboxError>) -> usize {
    match r {
        Ok(n) => {
            if n > 0 {
                tracing::info!(
                    sandbox = kind,
                    removed = n,
                    "swept leftovers of earlier workers"
                );
            }
            n
        }
        Err(e) => {
            tracing::warn!(sandbox = kind, error = %e, "sweep failed");
            0
        }
    }
}
