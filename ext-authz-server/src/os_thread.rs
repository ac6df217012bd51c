//! The admin API (and the change feed on it) runs on threads of their own at a lower CPU
//! priority than the checks: a flood of feed reads (any holder of a feed token can send one)
//! then takes CPU from idle time, not from privileged checks. This module owns the one OS call
//! that needs: lowering the calling thread's priority.

/// Lowers the calling thread's scheduling priority (nice +10 on Linux). Best effort: a
/// failure (or another OS) leaves it as it was, and is logged.
#[allow(unsafe_code)]
pub fn lower_priority_of_this_thread() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: `gettid` takes no arguments and cannot fail; `setpriority` takes plain
        // integers (which = PRIO_PROCESS, who = this thread's id, a nice value) and touches
        // no memory of ours. On Linux PRIO_PROCESS with a thread id applies to that thread.
        let result = unsafe {
            let tid = libc::gettid();
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, 10)
        };
        if result != 0 {
            tracing::warn!(
                error = %std::io::Error::last_os_error(),
                "admin_thread_priority: could not lower it; a feed flood competes with checks for CPU"
            );
        }
    }
}
