//! The locked-down WASI context every stage gets, built when the guest
//! first calls WASI (a `no_std` stage imports none, and never does).
//!
//! Rust's standard library makes a guest import `wasi:cli` and `wasi:io` even
//! if it never prints. Those imports are satisfied here with nothing behind
//! them: no arguments, no environment, no preopened directory, no network
//! (TCP, UDP and name lookup are all refused), stdin empty. A stage granted
//! `wasi:filesystem` sees only the directories its manifest entry names, read
//! only; one granted `wasi:sockets` may reach only the addresses it lists.
//! Whatever the guest writes to stdout or stderr goes into the host log, one
//! event per line, tagged with the stage and the request, and bounded per
//! invocation.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use rand_pcg::Mcg128Xsl64;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamResult};
use wasmtime_wasi::sockets::SocketAddrUse;
use wasmtime_wasi::{FsPerms, HostMonotonicClock, HostWallClock, WasiCtx, WasiCtxBuilder};

use crate::manifest::WasiSpec;
use crate::runtime::LogTag;
use crate::runtime::imports::log::{MAX_LINE_BYTES, escape, truncate};

/// The most bytes of stdout plus stderr logged per invocation.
const MAX_OUTPUT_BYTES: usize = 16 * 1024;

/// Who is writing, and how much they wrote, for one instance's stdout and
/// stderr. A reused instance gets a new tag and a fresh budget per request.
#[derive(Clone)]
pub(crate) struct GuestLogs(Arc<Mutex<LogState>>);

struct LogState {
    tag: LogTag,
    logged: usize,
    dropped: usize,
    /// The last lines written to stderr, for an error that quotes them.
    stderr_tail: Vec<String>,
}

/// How many of the last stderr lines [`GuestLogs::stderr_tail`] keeps.
const STDERR_TAIL_LINES: usize = 3;

impl GuestLogs {
    pub(crate) fn new(tag: LogTag) -> GuestLogs {
        GuestLogs(Arc::new(Mutex::new(LogState {
            tag,
            logged: 0,
            dropped: 0,
            stderr_tail: Vec::new(),
        })))
    }

    /// The last few lines the guest wrote to stderr (a panic's location
    /// and message are among them) on one line, without Rust's hint about
    /// `RUST_BACKTRACE`.
    pub(crate) fn stderr_tail(&self) -> Option<String> {
        let state = self.lock();
        let lines: Vec<&str> = state
            .stderr_tail
            .iter()
            .map(|line| line.trim())
            .filter(|line| !line.is_empty() && !line.starts_with("note: run with `RUST_BACKTRACE"))
            .collect();
        (!lines.is_empty()).then(|| lines.join(" "))
    }

    /// Start a new invocation: a new tag, a fresh budget. Reports what the
    /// last one dropped.
    pub(crate) fn restart(&self, tag: LogTag) {
        let mut state = self.lock();
        report_dropped(&state);
        *state = LogState {
            tag,
            logged: 0,
            dropped: 0,
            stderr_tail: Vec::new(),
        };
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Drop for LogState {
    fn drop(&mut self) {
        report_dropped(self);
    }
}

fn report_dropped(state: &LogState) {
    if state.dropped > 0 {
        let tag = &state.tag;
        tracing::warn!(
            request_id = %tag.request_id, pipeline = %tag.pipeline,
            generation = tag.generation, stage = %tag.stage, digest = %tag.digest,
            dropped_bytes = state.dropped,
            "stage output over the {MAX_OUTPUT_BYTES}-byte log budget was dropped"
        );
    }
}

/// One instance's WASI context, built when the guest first calls WASI: a
/// stage that never does (a `no_std` one imports no WASI at all) never
/// pays for building it.
pub(crate) struct LazyWasi {
    built: Option<WasiCtx>,
    seed: Option<u64>,
    spec: Arc<WasiSpec>,
}

impl LazyWasi {
    /// The context [`locked_down`] will build from `seed` and `spec`.
    pub(crate) fn new(seed: Option<u64>, spec: Arc<WasiSpec>) -> LazyWasi {
        LazyWasi {
            built: None,
            seed,
            spec,
        }
    }

    /// The context, built now if this is the guest's first WASI call; its
    /// stdout and stderr go to `logs`.
    pub(crate) fn get(&mut self, logs: &GuestLogs) -> &mut WasiCtx {
        self.built
            .get_or_insert_with(|| locked_down(logs, self.seed, &self.spec))
    }
}

/// Build the WASI context of one instance. With a `seed`, the stage is
/// deterministic: its wall clock is fixed, its monotonic clock stands still,
/// and its randomness is a stream drawn from the seed.
pub(crate) fn locked_down(logs: &GuestLogs, seed: Option<u64>, wasi: &WasiSpec) -> WasiCtx {
    let mut builder = WasiCtxBuilder::new();
    builder
        .stdout(GuestOutput::new(logs.clone(), Channel::Stdout))
        .stderr(GuestOutput::new(logs.clone(), Channel::Stderr))
        .allow_ip_name_lookup(false);
    for (host, guest) in &wasi.dirs {
        // Checked when the manifest was read; a directory removed since is
        // simply not there for the guest.
        if let Err(error) = builder.preopened_dir(host, guest, FsPerms::ReadOnly) {
            tracing::warn!(directory = %host.display(), %error, "cannot open a stage's directory");
        }
    }
    if wasi.allow.is_empty() {
        builder.allow_tcp(false).allow_udp(false);
    } else {
        let allowed = Arc::new(wasi.allow.clone());
        builder.allow_tcp(true).allow_udp(true);
        builder.socket_addr_check(move |address, usage| {
            let permitted = match usage {
                // Connecting binds implicitly to the wildcard address; that
                // is allowed, binding to anything else (or listening) is not.
                SocketAddrUse::TcpBind | SocketAddrUse::UdpBind => {
                    address.ip().is_unspecified() && address.port() == 0
                }
                SocketAddrUse::TcpListen => false,
                _ => allowed.contains(&address),
            };
            Box::pin(async move { permitted })
        });
    }
    if let Some(seed) = seed {
        builder
            .wall_clock(FixedClock)
            .monotonic_clock(FixedClock)
            .secure_random(seeded(seed))
            .insecure_random(seeded(seed ^ 0x5bd1_e995))
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

/// The randomness of a deterministic stage: a PCG stream drawn from
/// `seed`, generated as the guest asks for it (most ask for a few bytes, to
/// seed a hash map).
fn seeded(seed: u64) -> Mcg128Xsl64 {
    // The seed is spread over both halves of the generator's state.
    Mcg128Xsl64::new(u128::from(seed) << 64 | u128::from(seed.rotate_left(29) ^ 0x9e37_79b9))
}

#[derive(Debug, Clone, Copy)]
enum Channel {
    Stdout,
    Stderr,
}

/// One of a guest's output streams. Cloned for each stream handle the guest
/// opens; the line buffer is shared, and the last clone to go flushes it.
#[derive(Clone)]
struct GuestOutput {
    lines: Arc<Mutex<LineBuffer>>,
}

impl GuestOutput {
    fn new(logs: GuestLogs, channel: Channel) -> Self {
        GuestOutput {
            lines: Arc::new(Mutex::new(LineBuffer {
                logs,
                channel,
                pending: Vec::new(),
            })),
        }
    }

    fn accept(&self, bytes: &[u8]) {
        self.lines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(bytes);
    }
}

struct LineBuffer {
    logs: GuestLogs,
    channel: Channel,
    pending: Vec<u8>,
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
        let mut state = self.logs.lock();
        if state.logged + line.len() > MAX_OUTPUT_BYTES {
            state.dropped += line.len() + 1;
            return;
        }
        state.logged += line.len() + 1;
        let text = String::from_utf8_lossy(&line);
        let text = escape(truncate(&text, MAX_LINE_BYTES));
        if let Channel::Stderr = self.channel {
            if state.stderr_tail.len() == STDERR_TAIL_LINES {
                state.stderr_tail.remove(0);
            }
            state.stderr_tail.push(text.to_string());
        }
        let tag = state.tag.clone();
        drop(state);
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
