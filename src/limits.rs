//! The process's limits. Open files: every tenant's poll holds an HTTPS connection and every
//! destination a socket: at a few thousand tenants the usual soft limit of 1,024 is reached
//! before the hard one (often 524,288), and what fails then is `accept` or `connect` with
//! EMFILE. A daemon raises its soft limit to the hard one at start, as Go's runtime does for
//! every program since Go 1.19 (its release notes, "os" package); systemd units set `LimitNOFILE` besides.
//!
//! And the allocator's arenas: glibc gives each thread that allocates an arena of its own, up to
//! eight per core, and each keeps what was freed in it for reuse. The decoding workers
//! (`workers.rs`), tokio's threads and the input thread then hold several copies of the same
//! few chunk-sized buffers: on the replay bench (1 M records) two arenas took the daemon's peak
//! RSS from 49-53 MB to 42-44 MB, at the same speed within the machine's noise. The
//! `MALLOC_ARENA_MAX` variable (glibc's `mallopt(3)` tunable) or `glibc.malloc.arena_max` in
//! `GLIBC_TUNABLES` still decides when it is set. Only the daemon (`run`) caps them: `send` and
//! `convert` end when their input does, and two arenas shared by their input thread, workers
//! and writer cost them 7 % of their speed (README, Backfill) for no memory gained (1 M alerts:
//! peak RSS 29 MB either way).

/// Raises the soft `RLIMIT_NOFILE` to the hard limit. Returns the limit in effect (after the
/// change, or as it was when it could not be changed); `None` where it cannot be read.
pub fn raise_open_files() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read or write the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return Some(raised.rlim_cur);
        }
    }
    Some(lim.rlim_cur)
}

/// Arenas for the allocator when `MALLOC_ARENA_MAX` is not set (see the module docs).
pub const MALLOC_ARENAS: i32 = 2;

/// Caps glibc's malloc arenas at [`MALLOC_ARENAS`], unless the environment sets them.
/// Call before the first thread starts. A no-op with other C libraries.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if !arenas_set_by_user(
        std::env::var_os("MALLOC_ARENA_MAX").is_some(),
        std::env::var("GLIBC_TUNABLES").ok().as_deref(),
    ) {
        // SAFETY: mallopt only sets an allocator parameter; no thread allocates yet.
        unsafe { libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS) };
    }
}

/// Whether the user chose the arena count: `MALLOC_ARENA_MAX`, or `glibc.malloc.arena_max` in
/// `GLIBC_TUNABLES` (colon-separated `name=value` pairs; glibc's manual, "Tunables").
fn arenas_set_by_user(malloc_arena_max: bool, tunables: Option<&str>) -> bool {
    malloc_arena_max
        || tunables.is_some_and(|t| {
            t.split(':').any(|pair| {
                pair.split_once('=').map(|(name, _)| name) == Some("glibc.malloc.arena_max")
            })
        })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_user_sets_arenas_by_either_variable() {
        for (var, tunables, set) in [
            (false, None, false),
            (true, None, true),
            (false, Some("glibc.malloc.arena_max=4"), true),
            (
                false,
                Some("glibc.malloc.trim_threshold=0:glibc.malloc.arena_max=1"),
                true,
            ),
            (false, Some("glibc.malloc.arena_test=8"), false),
            (false, Some("glibc.malloc.arena_max"), false),
            (false, Some(""), false),
        ] {
            assert_eq!(
                super::arenas_set_by_user(var, tunables),
                set,
                "{var} {tunables:?}"
            );
        }
    }

    #[test]
    fn the_soft_limit_ends_at_the_hard_one() {
        let after = super::raise_open_files().expect("getrlimit works on Linux");
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
        assert_eq!(lim.rlim_cur, lim.rlim_max);
        assert_eq!(after, lim.rlim_cur);
    }
}
