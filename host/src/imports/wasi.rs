//! The locked-down WASI context every stage gets.
//!
//! Rust's standard library makes a guest import `wasi:cli` and `wasi:io` even
//! if it never prints. Those imports are satisfied here with nothing behind
//! them: no arguments, no environment, no preopened directory, no network
//! (TCP, UDP and name lookup are all refused), stdin empty. Whatever the guest
//! writes to stdout or stderr goes into the host log, one event per line,
//! tagged with the stage and the request, and bounded per invocation.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use std::time::Duration;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::{Deterministic, HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder};

use crate::imports::log::{MAX_LINE_BYTES, truncate};
use crate::runtime::LogTag;

/// The most bytes of stdout plus stderr logged per invocation.
const MAX_OUTPUT_BYTES: usize = 16 * 1024;

/// Build the WASI context of one invocation. With a `seed`, the stage is
/// deterministic: its wall clock is fixed, its monotonic clock stands still,
/// and its randomness is a stream drawn from the seed.
pub(crate) fn locked_down(tag: &LogTag, seed: Option<u64>) -> WasiCtx {
    let budget = Arc::new(Mutex::new(OutputBudget::default()));
    let mut builder = WasiCtxBuilder::new();
    builder
        .stdout(GuestOutput::new(
            tag.clone(),
            Channel::Stdout,
            budget.clone(),
        ))
        .stderr(GuestOutput::new(tag.clone(), Channel::Stderr, budget))
        .allow_tcp(false)
        .allow_udp(false)
        .allow_ip_name_lookup(false);
    if let Some(seed) = seed {
        builder
            .wall_clock(FixedClock)
            .monotonic_clock(FixedClock)
            .secure_random(Deterministic::new(seeded_bytes(seed)))
            .insecure_random(Deterministic::new(seeded_bytes(seed ^ 0x5bd1_e995)))
            .insecure_random_seed(u128::from(seed) << 64 | u128::from(seed.rotate_left(17)));
    }
    builder.build()
}

/// The time a deterministic stage sees: 2024-01-01T00:00:00Z, always.
pub const FIXED_TIME: Duration = Duration::from_secs(1_704_067_200);

struct FixedClock;

impl HostWallClock for FixedClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn now(&self) -> Duration {
        FIXED_TIME
    }
}

impl HostMonotonicClock for FixedClock {
    fn resolution(&self) -> u64 {
        1
    }

    fn now(&self) -> u64 {
        0
    }
}

/// 4 KiB of splitmix64 output: the byte stream a deterministic stage's
/// randomness cycles through.
fn seeded_bytes(seed: u64) -> Vec<u8> {
    let mut state = seed;
    let mut bytes = Vec::with_capacity(4096);
    while bytes.len() < 4096 {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        bytes.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
    }
    bytes
}

#[derive(Debug, Clone, Copy)]
enum Channel {
    Stdout,
    Stderr,
}

/// Bytes logged so far by one invocation, shared by its stdout and stderr.
#[derive(Debug, Default)]
struct OutputBudget {
    logged: usize,
    dropped: usize,
}

/// One of a guest's output streams. Cloned for each stream handle the guest
/// opens; the line buffer is shared, and the last clone to go flushes it.
#[derive(Clone)]
struct GuestOutput {
    lines: Arc<Mutex<LineBuffer>>,
}

impl GuestOutput {
    fn new(tag: LogTag, channel: Channel, budget: Arc<Mutex<OutputBudget>>) -> Self {
        GuestOutput {
            lines: Arc::new(Mutex::new(LineBuffer {
                tag,
                channel,
                pending: Vec::new(),
                budget,
            })),
        }
    }

    fn accept(&self, bytes: &[u8]) {
        self.lines
            .lock()
            .expect("guest output lock is never poisoned")
            .push(bytes);
    }
}

struct LineBuffer {
    tag: LogTag,
    channel: Channel,
    pending: Vec<u8>,
    budget: Arc<Mutex<OutputBudget>>,
}

impl LineBuffer {
    fn push(&mut self, mut bytes: &[u8]) {
        while let Some(newline) = bytes.iter().position(|&b| b == b'\n') {
            self.pending.extend_from_slice(&bytes[..newline]);
            self.emit();
            bytes = &bytes[newline + 1..];
        }
        self.pending.extend_from_slice(bytes);
        // A guest that never writes a newline still cannot grow the buffer
        // without bound.
        if self.pending.len() >= MAX_LINE_BYTES {
            self.emit();
        }
    }

    fn emit(&mut self) {
        let line = std::mem::take(&mut self.pending);
        let mut budget = self.budget.lock().expect("budget lock is never poisoned");
        if budget.logged + line.len() > MAX_OUTPUT_BYTES {
            budget.dropped += line.len() + 1;
            return;
        }
        budget.logged += line.len() + 1;
        drop(budget);
        let text = String::from_utf8_lossy(&line);
        let text = truncate(&text, MAX_LINE_BYTES);
        let tag = &self.tag;
        match self.channel {
            Channel::Stdout => tracing::info!(
                target: "strata::guest::stdout",
                request_id = %tag.request_id, pipeline = %tag.pipeline,
                generation = tag.generation, stage = %tag.stage, digest = %tag.digest,
                "{text}"
            ),
            Channel::Stderr => tracing::warn!(
                target: "strata::guest::stderr",
                request_id = %tag.request_id, pipeline = %tag.pipeline,
                generation = tag.generation, stage = %tag.stage, digest = %tag.digest,
                "{text}"
            ),
        }
    }
}

impl Drop for LineBuffer {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            self.emit();
        }
        // The stdout buffer drops after the stderr one or the other way
        // round; whichever goes last reports what the budget dropped.
        let budget = self.budget.lock().expect("budget lock is never poisoned");
        if budget.dropped > 0 && Arc::strong_count(&self.budget) == 1 {
            let tag = &self.tag;
            tracing::warn!(
                request_id = %tag.request_id, pipeline = %tag.pipeline,
                generation = tag.generation, stage = %tag.stage, digest = %tag.digest,
                dropped_bytes = budget.dropped,
                "stage output over the {MAX_OUTPUT_BYTES}-byte log budget was dropped"
            );
        }
    }
}

impl IsTerminal for GuestOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for GuestOutput {
    async fn ready(&mut self) {}
}

#[wasmtime_wasi::async_trait]
impl OutputStream for GuestOutput {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        self.accept(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        // Output past the budget is dropped rather than refused, so a chatty
        // guest never fails because of its logging.
        Ok(64 * 1024)
    }
}

impl AsyncWrite for GuestOutput {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.accept(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
