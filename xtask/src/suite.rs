//! `cargo xtask test`: the whole check, as CI runs it: format, lints (the kernel crate's with
//! nightly), every test against the release proxy, then the console's API fuzzed.

use std::process::Command;

use crate::{console_fuzz, kernel, setup, workspace};

pub fn run(args: &[String]) -> anyhow::Result<()> {
    setup::run()?;
    workspace::build_proxy()?;
    workspace::run(Command::new("cargo").args(["fmt", "--all", "--check"]))?;
    workspace::run(Command::new("cargo").args([
        "clippy",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    kernel::clippy()?;
    let mut cmd = Command::new("cargo");
    // The default members: everything but the kernel crate, which only builds for BPF.
    cmd.args(["test", "--no-fail-fast"]);
    cmd.args(args);
    // One test at a time: the network-namespace tests each run hundreds of connections and
    // real servers, and on a 2-core machine running them side by side starves the peers the
    // tests stand up (their accept loops), which is not what the tests are about.
    if !args.iter().any(|a| a == "--") {
        cmd.arg("--");
    }
    cmd.arg("--test-threads=1");
    cmd.env("DEVICELINK_PROXY_BIN", workspace::proxy_binary());
    let tests = workspace::run(&mut cmd);
    // The console's OpenAPI document fuzzed against a running console: no 5xx, no response that
    // breaks its own schema. Run even when a test failed, so one run reports both.
    let fuzz = console_fuzz::run();
    tests.and(fuzz)
}
