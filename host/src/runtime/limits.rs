//! The memory cap of one stage invocation.

use wasmtime::ResourceLimiter;

/// Caps the total linear memory of one instance (all its memories together)
/// and records whether the cap was hit, so a failure is reported as "memory
/// limit" with certainty instead of as the trap it causes.
pub(crate) struct StageLimiter {
    cap: usize,
    used: usize,
    exceeded: bool,
}

impl StageLimiter {
    pub(crate) fn new(memory_mib: u32) -> Self {
        StageLimiter {
            cap: (memory_mib as usize) << 20,
            used: 0,
            exceeded: false,
        }
    }

    /// Raise the cap by `bytes` (for the host's own work in an instance).
    pub(crate) fn allow_more(&mut self, bytes: usize) {
        self.cap += bytes;
    }

    /// Whether the guest tried to grow past the cap.
    pub(crate) fn exceeded(&self) -> bool {
        self.exceeded
    }
}

impl ResourceLimiter for StageLimiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let after = self.used - current.min(self.used) + desired;
        if after > self.cap {
            self.exceeded = true;
            // An error (rather than `Ok(false)`) traps at once: the guest
            // never sees a failed allocation it could misreport.
            wasmtime::bail!(
                "memory limit of {} MiB reached growing to {desired} bytes",
                self.cap >> 20
            );
        }
        self.used = after;
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // Tables hold function references; a generous bound stops a guest
        // from using them to allocate host memory without limit.
        Ok(desired <= 1_000_000)
    }
}
