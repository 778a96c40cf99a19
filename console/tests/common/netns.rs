//! Work done inside a namespace while borrowing the test's state: the test bed's
//! `Netns::spawn` wants `'static` closures, and a WebDriver session driven from a namespace
//! borrows the topology, the console and sshd for its whole length.

use std::{fs, os::fd::AsRawFd as _, thread};

use devicelink_testbed::Netns;

/// Runs `f` on a scoped thread that has entered `ns`'s network namespace, and waits for it.
pub fn run_in<R: Send>(ns: &Netns, f: impl FnOnce() -> R + Send) -> R {
    let path = format!("/run/netns/{}", ns.name());
    thread::scope(|scope| {
        scope
            .spawn(|| {
                let file = fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
                // SAFETY: setns takes no pointers; the descriptor is a namespace file held open
                // by `file` for the call, and the switch affects only this new thread.
                let entered = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(
                    entered,
                    0,
                    "entering {path}: {}",
                    std::io::Error::last_os_error()
                );
                f()
            })
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}
