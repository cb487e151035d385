//! The sandboxes this worker runs, behind one handle the runner and daemon use.
//! Each sandbox owns what it prestarts (helpers, containers).

use std::sync::Arc;

use broker::protocol::SandboxKind;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::sandbox::container::prestart::PrestartConfig;
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
                None => Err(SandboxError::NotEnabled(SandboxKind::Process)),
            },
            SandboxKind::Container => match &self.container {
                Some(s) => s.run(spec, events, cancel).await,
                None => Err(SandboxError::NotEnabled(SandboxKind::Container)),
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

    /// Removes what dead workers on this host left (periodic); returns the count.
    pub async fn reap(&self) -> usize {
        let mut n = 0;
        if let Some(s) = &self.process {
            n += log_sweep("process", s.reap().await);
        }
        if let Some(s) = &self.container {
            n += log_sweep("container", s.reap().await);
        }
        n
    }

    /// Runs one trivial task in the process sandbox with the pool's default
    /// limits: a worker whose sandbox cannot run anything says so at start.
    pub async fn probe(
        &self,
        defaults: &crate::sandbox::Effective,
        worker_id: &str,
    ) -> Result<(), SandboxError> {
        if let Some(s) = &self.process {
            s.probe(defaults, worker_id).await?;
        }
        Ok(())
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

    /// Starts prestarting `per_image` containers per allowed image with the pool's
    /// default limits (after the start-up sweep; nothing without the container sandbox).
    pub fn start_prestart(
        &self,
        per_image: u32,
        defaults: crate::sandbox::Effective,
        worker_id: &str,
    ) {
        if let Some(c) = &self.container {
            c.start_prestart(PrestartConfig {
                per_image: per_image as usize,
                defaults,
                worker_id: worker_id.to_string(),
            });
        }
    }

    /// Sandboxes prestarted and waiting for a task, by kind.
    pub fn prestarted(&self) -> Vec<(SandboxKind, usize)> {
        let mut out = Vec::new();
        if let Some(s) = &self.process {
            out.push((SandboxKind::Process, s.prestarted()));
        }
        if let Some(s) = &self.container {
            out.push((SandboxKind::Container, s.prestarted()));
        }
        out
    }

    /// Removes what the sandboxes prestarted, then waits for background clean-up.
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
            tracing::warn!(sandbox = kind, error = %crate::error::chain(&e), "sweep failed");
            0
        }
    }
}
