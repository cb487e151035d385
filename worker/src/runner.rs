//! One task, start to end: check it against the pool's policy, run it in its
//! sandbox, mask and cap its output while streaming it as live log chunks (the
//! [`pump`](crate::pump)), read its output variables, and build the result.
//! Never panics on a task and never returns without a result.

use std::sync::Arc;

use broker::protocol::{OutputVar, SandboxKind, Status, Task, TaskResult};
use chrono::Utc;
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::cancel::Cancel;
use crate::config::{Policy, PolicyError};
use crate::outbound::Outbound;
use crate::output::{
    escape_log, not_masked, parse as parse_vars, register_sensitive, MaskError, MaskSet, Notes,
};
use crate::pump::{FirstOutput, Pump, Pumped};
use crate::sandbox::{Exit, Outcome, SandboxError, Spec};
use crate::sandboxes::Sandboxes;

/// Events buffered between a sandbox and the runner (backpressure beyond it).
const EVENT_BUFFER: usize = 64;

/// What a runner needs from the worker.
#[derive(Debug, Clone)]
pub struct RunCtx {
    pub worker_id: String,
    pub policy: Arc<Policy>,
    pub sandboxes: Sandboxes,
    pub outbound: Outbound,
    pub metrics: Arc<crate::metrics::Metrics>,
}

/// Runs one task and returns its result (every path ends in a result).
pub async fn run(ctx: &RunCtx, task: Task, attempt: u32, cancel: Cancel) -> TaskResult {
    let span = tracing::info_span!("task", task_id = %task.id, attempt);
    async move {
        let started_at = Utc::now();
        let masks = MaskSet::new();
        let mut result = TaskResult::new(task.id.clone(), Status::Rejected);
        result.attempt = attempt;
        result.worker = Some(ctx.worker_id.clone());
        result.timings.queued_at = task.submitted_at;
        result.timings.started_at = Some(started_at);
        let mut unmaskable = None;
        for (name, secret) in &task.secrets {
            // Sealed values are opened at intake; one still sealed is refused in `prepare`.
            let Some(value) = secret.plain() else {
                continue;
            };
            match masks.add(value) {
                Ok(()) => {}
                Err(e @ MaskError::TooShort) => result.warnings.push(not_masked("secret", name, e)),
                // A secret that cannot be masked must not run: fail closed.
                Err(e @ MaskError::Full) => {
                    unmaskable.get_or_insert_with(|| not_masked("secret", name, e));
                }
            }
        }
        let prepared = match unmaskable {
            Some(reason) => Err(reason),
            None => prepare(ctx, &task).map_err(|e| e.to_string()),
        };
        match prepared {
            Err(reason) => {
                let reason = masks.mask_str(&reason);
                tracing::info!(reason = %escape_log(&reason), "task rejected");
                result.error = Some(reason);
            }
            Ok((kind, spec, output_cap)) => {
                result.sandbox = Some(kind);
                execute(ctx, kind, spec, output_cap, &masks, &cancel, &mut result).await;
            }
        }
        result.timings.finished_at = Some(Utc::now());
        tracing::info!(status = %result.status, exit_code = ?result.exit_code, "task finished");
        result
    }
    .instrument(span)
    .await
}

/// Checks the task against the pool and builds the sandbox spec. (The image
/// is checked by the container sandbox, against its own allow-list.)
fn prepare(ctx: &RunCtx, task: &Task) -> Result<(SandboxKind, Spec, u64), PolicyError> {
    task.validate()?;
    if let Some((name, _)) = task.secrets.iter().find(|(_, v)| v.is_sealed()) {
        return Err(PolicyError::SealedSecret(name.clone()));
    }
    let policy = &ctx.policy;
    let kind = policy.kind(task.sandbox)?;
    let limits = policy.effective(&task.limits)?;
    let output_cap = policy.output_cap(&task.limits)?;
    let image = match kind {
        SandboxKind::Process => None,
        SandboxKind::Container => task.image.clone(),
    };
    let env = task
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .chain(
            task.secrets
                .iter()
                .map(|(k, v)| (k.clone(), v.plain().unwrap_or_default().to_string())),
        )
        .collect();
    Ok((
        kind,
        Spec {
            task_id: task.id.clone(),
            worker_id: ctx.worker_id.clone(),
            script: task.script.clone(),
            interpreter: task.interpreter.clone(),
            env,
            limits,
            image,
        },
        output_cap,
    ))
}

#[allow(clippy::too_many_arguments)]
async fn execute(
    ctx: &RunCtx,
    kind: SandboxKind,
    spec: Spec,
    output_cap: u64,
    masks: &MaskSet,
    cancel: &Cancel,
    result: &mut TaskResult,
) {
    let (tx, rx) = mpsc::channel(EVENT_BUFFER);
    let task_id = spec.task_id.clone();
    result.network = spec
        .limits
        .network
        .then(|| broker::protocol::NetworkApplied {
            allow: spec
                .limits
                .network_allow
                .iter()
                .map(ToString::to_string)
                .collect(),
        });
    // Masks known before any output: the capture is masked with these as it flows.
    let generation = masks.generation();
    let sandbox_run = ctx.sandboxes.run(kind, spec, tx, cancel.token().clone());
    let mut pump = Pump::new(task_id, masks.clone(), output_cap, ctx.outbound.clone());
    pump.first_output = Some(FirstOutput {
        metrics: ctx.metrics.clone(),
        kind,
        handed_at: std::time::Instant::now(),
    });
    let (outcome, mut pumped) = tokio::join!(sandbox_run, pump.run(rx));
    let mut notes = Lists {
        warnings: Notes::from(std::mem::take(&mut result.warnings)),
        errors: Notes::new(),
    };
    notes.warnings.extend(std::mem::take(&mut pumped.warnings));
    match outcome {
        Err(e) => {
            let text = masks.mask_str(&crate::error::chain(&e));
            tracing::warn!(error = %escape_log(&text), "sandbox failed");
            result.status = match e {
                SandboxError::ImageNotAllowed(_) => Status::Rejected,
                _ => Status::SandboxError,
            };
            result.error = Some(text);
            finish_output(result, masks, generation, pumped, notes, false);
        }
        Ok(outcome) => {
            let withhold = apply_outcome(result, masks, outcome, cancel, &mut notes);
            finish_output(result, masks, generation, pumped, notes, withhold);
        }
    }
}

/// The result's bounded lists while it is built.
struct Lists {
    warnings: Notes,
    errors: Notes,
}

/// Fills in the outcome; returns whether the whole output must be withheld
/// (a final sensitive value could not be masked: it may have been printed).
fn apply_outcome(
    result: &mut TaskResult,
    masks: &MaskSet,
    outcome: Outcome,
    cancel: &Cancel,
    notes: &mut Lists,
) -> bool {
    result.sandbox_id = Some(outcome.sandbox_id);
    result.usage = outcome.usage;
    result.limits = outcome.enforcement;
    result.landlock = outcome.landlock;
    // Sensitive values first, so they are masked in everything built below.
    let mut outputs = Vec::new();
    let mut withhold = false;
    match outcome.sensitive {
        Ok(bytes) => {
            let parsed = parse_vars(&bytes);
            if let Some(why) = register_sensitive(masks, &parsed, &mut notes.warnings) {
                notes.warnings.push_unique(why);
                withhold = true;
            }
            for e in &parsed.errors {
                notes.errors.push(format!("KRILL_SENSITIVE_OUTPUT: {e}"));
            }
            notes.errors.omit(parsed.errors_omitted as u64);
            outputs.extend(parsed.vars.into_iter().map(|(name, value)| OutputVar {
                name,
                value,
                sensitive: true,
                sealed: None,
            }));
        }
        Err(e) => notes.errors.push(format!("KRILL_SENSITIVE_OUTPUT: {e}")),
    }
    match outcome.outputs {
        Ok(bytes) => {
            let parsed = parse_vars(&bytes);
            let plain = parsed.vars.into_iter().map(|(name, value)| OutputVar {
                name,
                value: masks.mask_str(&value),
                sensitive: false,
                sealed: None,
            });
            // Plain outputs first, in the order set; sensitive ones after.
            let mut all: Vec<OutputVar> = plain.collect();
            all.append(&mut outputs);
            outputs = all;
            for e in &parsed.errors {
                notes.errors.push(format!("KRILL_OUTPUT: {e}"));
            }
            notes.errors.omit(parsed.errors_omitted as u64);
        }
        Err(e) => notes.errors.push(format!("KRILL_OUTPUT: {e}")),
    }
    // A name is shown everywhere (and never masked): one holding a secret is dropped.
    outputs.retain(|o| {
        let clean = masks.mask_str(&o.name) == o.name;
        if !clean {
            let file = if o.sensitive {
                "KRILL_SENSITIVE_OUTPUT"
            } else {
                "KRILL_OUTPUT"
            };
            notes.errors.push(format!(
                "{file}: a variable name contains a masked value; the variable is dropped"
            ));
        }
        clean
    });
    result.outputs = outputs;
    let (status, error) = match outcome.exit {
        Exit::Code(0) => {
            result.exit_code = Some(0);
            (Status::Succeeded, None)
        }
        Exit::Code(c) => {
            result.exit_code = Some(c);
            (Status::Failed, None)
        }
        Exit::Signal(s) => {
            result.signal = Some(s);
            (Status::Failed, Some(format!("killed by signal {s}")))
        }
        Exit::TimedOut => (Status::TimedOut, Some("killed at its deadline".to_string())),
        Exit::Cancelled => {
            let why = cancel.reason().unwrap_or_else(|| "cancelled".to_string());
            (Status::Cancelled, Some(why))
        }
        Exit::OomKilled => (
            Status::OomKilled,
            Some("killed by the memory limit".to_string()),
        ),
    };
    result.status = status;
    result.error = error.map(|e| masks.mask_str(&e));
    withhold
}

/// Re-masks the captured text with every mask known at the end (a sensitive output
/// set after a value was printed still hides it in the result) — unless no mask
/// was added since the output started (`generation`): the capture was masked as
/// it flowed, and the kept output is neither scanned nor copied again. With
/// `withhold` (a value could not be masked) no output is kept at all.
fn finish_output(
    result: &mut TaskResult,
    masks: &MaskSet,
    generation: u64,
    pumped: Pumped,
    mut notes: Lists,
    withhold: bool,
) {
    let truncated = pumped.stdout.truncated() || pumped.stderr.truncated() || pumped.withheld;
    let (out, lossy_out) = pumped.stdout.into_text();
    let (err, lossy_err) = pumped.stderr.into_text();
    if withhold {
        result.stdout = String::new();
        result.stderr = String::new();
    } else if masks.generation() == generation {
        result.stdout = out;
        result.stderr = err;
    } else {
        result.stdout = masks.mask_str(&out);
        result.stderr = masks.mask_str(&err);
    }
    result.truncated = truncated || withhold;
    result.lossy = pumped.lossy || lossy_out || lossy_err;
    notes.errors.map(|e| masks.mask_str(e));
    notes.warnings.map(|w| masks.mask_str(w));
    result.output_errors = notes.errors.into_vec("output errors");
    result.warnings = notes.warnings.into_vec("warnings");
}
