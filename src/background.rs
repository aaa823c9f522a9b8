//! Threads that work behind the proxy's workers (the Kubernetes controller,
//! the access log's writer) run below the workers' CPU priority: when both
//! want the CPU, a request waits for neither; when the workers are idle,
//! they run at full speed.

/// Raises the calling thread's nice value by `nice` (Linux keeps one per
/// thread). A failure only costs the preference, so it is logged, not fatal.
pub(crate) fn lower_this_threads_priority(nice: i32) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: gettid and setpriority take plain integers and touch only
        // this thread's scheduling attributes.
        let result = unsafe { libc::setpriority(libc::PRIO_PROCESS as _, libc::gettid() as _, nice) };
        if result != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "cannot lower a background thread's priority");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #[test]
    fn lowers_only_the_calling_thread() {
        // SAFETY: as above, plain integers.
        let nice_of_this_thread = || unsafe { libc::getpriority(libc::PRIO_PROCESS as _, libc::gettid() as _) };
        let before = nice_of_this_thread();
        let lowered = std::thread::spawn(move || {
            super::lower_this_threads_priority(5);
            nice_of_this_thread()
        })
        .join()
        .expect("thread");
        assert_eq!(lowered, (before + 5).min(19));
        assert_eq!(nice_of_this_thread(), before, "the spawning thread keeps its priority");
    }
}
