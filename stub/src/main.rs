//! `krill-stub`: a task container's command. Reads one request on stdin, runs the
//! script, frames its output back on stdout (see the `stub` library for the format).
//!
//! Built static (`scripts/build-stub`) so it runs in images without a libc, and
//! bind-mounted read-only into each task container.

mod reap;
mod supervise;

use std::process::ExitCode;

use stub::FromStub;
use supervise::Channel;

fn main() -> ExitCode {
    let mut chan = match Channel::from_stdio() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("krill-stub: cannot use stdin/stdout: {e}");
            return ExitCode::from(2);
        }
    };
    let req = match chan.read_request() {
        Ok(Some(req)) => req,
        // The worker went away before sending anything: nothing to do.
        Ok(None) => return ExitCode::from(2),
        Err(e) => {
            let _ = chan.send(&FromStub::StubError(format!("reading the request: {e}")));
            return ExitCode::from(2);
        }
    };
    match supervise::run(&mut chan, &req) {
        Ok(()) => {
            chan.wait_release(supervise::RELEASE_WAIT);
            ExitCode::SUCCESS
        }
        Err(e) => {
            let _ = chan.send(&FromStub::StubError(e));
            ExitCode::from(1)
        }
    }
}
