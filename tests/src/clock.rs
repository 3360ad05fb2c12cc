//! CLOCK_MONOTONIC in nanoseconds: the clock tokio's timers and `Instant` read on Linux, and
//! one all processes on the machine share, so the fault suite and its lock client processes
//! can compare their times. Shared by the lock client and the suite (`#[path]`).

pub fn monotonic_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}
