//! Child processes that die with the test binary.
//!
//! Every server a test starts (etcd, kube-apiserver, the IdP) is spawned
//! from one thread that lives as long as the process, with
//! `PR_SET_PDEATHSIG(SIGKILL)`: the death signal fires when the *thread*
//! that forked the child exits, so forking from a short-lived test thread
//! would kill the server while other tests still use it. The children are
//! killed when the test binary exits, passes, fails, panics or is killed.

use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};

/// Spawns `command` (stdin, stdout and stderr as the caller set them).
pub fn spawn(command: Command) -> std::io::Result<Child> {
    type Request = (Command, mpsc::Sender<std::io::Result<Child>>);
    static SUPERVISOR: OnceLock<Mutex<mpsc::Sender<Request>>> = OnceLock::new();
    let tx = SUPERVISOR.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Request>();
        std::thread::Builder::new()
            .name("test-process-supervisor".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
                    unsafe {
                        cmd.pre_exec(|| {
                            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                            Ok(())
                        });
                    }
                    let _ = reply.send(cmd.spawn());
                }
                // The sender lives in a static, so this loop (and the thread) never ends.
            })
            .expect("spawn the process supervisor");
        Mutex::new(tx)
    });
    let (reply_tx, reply_rx) = mpsc::channel();
    tx.lock().expect("supervisor lock").send((command, reply_tx)).expect("supervisor alive");
    reply_rx.recv().expect("supervisor replied")
}
