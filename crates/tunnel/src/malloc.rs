//! The C allocator's arenas, set before the runtime starts its threads (by the
//! server and the edge, the processes that carry tunnels).
//!
//! glibc gives threads up to eight arenas per core. An edge that runs each
//! session's data path on a thread of its own would otherwise start an arena
//! with most sessions (about 160 KiB of resident memory each in the lab). A
//! server that holds
//! thousands of long-lived connections, each set up amid short-lived handshake
//! allocations on whichever worker thread ran it, leaves every arena with
//! freed holes that are never returned: with 10,000 edge channels that was
//! about 3.6 KiB of resident memory per connection (docs/loadtest.md). One
//! arena per core keeps the workers from contending and the holes few.
//! `MALLOC_ARENA_MAX` or `GLIBC_TUNABLES` in the environment take precedence.

/// Limits glibc's arenas to the number of cores (see the module docs). Call it
/// before any thread is started; elsewhere than glibc it does nothing.
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var_os("MALLOC_ARENA_MAX").is_some()
            || std::env::var_os("GLIBC_TUNABLES").is_some()
        {
            return;
        }
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let arenas = libc::c_int::try_from(cores).unwrap_or(libc::c_int::MAX);
        // SAFETY: mallopt only sets an allocator parameter; M_ARENA_MAX takes
        // any positive count and affects arenas created from now on.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, arenas);
        }
    }
}

/// Bytes the C allocator has handed out and not got back (in its arenas and
/// in blocks of their own): what the process's data takes, without the
/// freed memory glibc keeps for reuse, which a resident-set figure counts.
/// `None` elsewhere than glibc.
pub fn heap_in_use() -> Option<u64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 takes no arguments and only reads the allocator's
        // statistics (under each arena's lock).
        let m = unsafe { libc::mallinfo2() };
        Some((m.uordblks as u64).saturating_add(m.hblkhd as u64))
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

/// A process's `main` for the server and the edge: limits the arenas, then runs
/// `body` on a multi-threaded runtime.
pub fn run_main(
    body: impl std::future::Future<Output = std::process::ExitCode>,
) -> std::process::ExitCode {
    // Before the runtime's threads exist.
    limit_arenas();
    match tokio::runtime::Runtime::new() {
        Ok(rt) => rt.block_on(body),
        Err(e) => {
            eprintln!("error: starting the runtime: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    #[test]
    fn the_heap_in_use_grows_with_what_is_allocated_and_shrinks_when_it_is_freed() {
        const SIZE: usize = 256 * 1024 * 1024;
        let before = super::heap_in_use().unwrap();
        // Touched, so that it is really handed out (and resident).
        let block = vec![1u8; SIZE];
        let held = super::heap_in_use().unwrap();
        assert_eq!(block[SIZE - 1], 1);
        drop(block);
        let after = super::heap_in_use().unwrap();
        // Other tests allocate and free meanwhile: far less than this block.
        assert!(held >= before + SIZE as u64 / 2, "{before} → {held}");
        assert!(after + SIZE as u64 / 2 <= held, "{held} → {after}");
    }
}
