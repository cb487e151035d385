//! `krill-sandbox-init`: the process sandbox's per-task helper (see
//! `worker::sandbox::process::init`). Small on purpose: it is started for
//! every task, and a large binary costs more to map and relocate.

fn main() {
    std::process::exit(worker::sandbox::process::init::helper());
}
