//! The sandboxes this worker runs, behind one handle the runner and daemon use.

use std::sync::Arc;

use broker::protocol::SandboxKind;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::sandbox::container::ContainerSandbox;
use crate::sandbox::process::ProcessSandbox;
use crate::sandbox::{Event, Outcome, Sandbox, SandboxError, Spec};

/// The enabled sandboxes (cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct Sandboxes {
    pub process: Option<Arc<ProcessSandbox>>,
    pub container: Option<Arc<ContainerSandbox>>,
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
                Some(s) => s.run(spec, events, cancel).await,
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

    /// Waits for background clean-up.
    pub async fn close(&self) {
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
