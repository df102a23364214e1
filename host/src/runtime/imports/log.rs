//! `strata:pipeline/log`: guest log lines go into the host's tracing log,
//! tagged with the pipeline, stage and request, and bounded so that a stage
//! cannot flood the log.

use wasmtime::component::{HasSelf, Linker};

use crate::runtime::bindings::v0_2::strata::pipeline::log::{Host, Level};
use crate::runtime::bindings::{v0_1, v0_2};
use crate::runtime::{LogTag, StageState};

/// The most lines one invocation may log; later lines are counted, not logged.
pub(crate) const MAX_LINES: u32 = 256;
/// The longest line logged; longer ones are cut.
pub(crate) const MAX_LINE_BYTES: usize = 4 * 1024;

/// What `log` needs of one invocation: whom to tag its lines with, and how
/// many it has logged.
pub(crate) struct LogCtx {
    tag: LogTag,
    lines: u32,
    dropped: u32,
}

impl LogCtx {
    pub(crate) fn new(tag: LogTag) -> LogCtx {
        LogCtx {
            tag,
            lines: 0,
            dropped: 0,
        }
    }

    /// The invocation the lines are tagged with.
    pub(crate) fn tag(&self) -> &LogTag {
        &self.tag
    }

    /// Start an invocation: its tag and a fresh budget.
    pub(crate) fn restart(&mut self, tag: &LogTag) {
        if self.tag.request_id != tag.request_id {
            self.tag = tag.clone();
        }
        self.lines = 0;
        self.dropped = 0;
    }

    /// Warn once for the lines this invocation logged past [`MAX_LINES`].
    pub(crate) fn report_dropped(&self) {
        if self.dropped > 0 {
            let tag = &self.tag;
            tracing::warn!(
                request_id = %tag.request_id, pipeline = %tag.pipeline,
                generation = tag.generation, stage = %tag.stage, digest = %tag.digest,
                dropped = self.dropped,
                "stage logged more than {MAX_LINES} lines; the rest were dropped"
            );
        }
    }
}

/// Link `log` of every contract version, served from [`StageState::log`].
pub(crate) fn add_to_linker(linker: &mut Linker<StageState>) -> wasmtime::Result<()> {
    v0_2::strata::pipeline::log::add_to_linker::<_, HasSelf<LogCtx>>(linker, |s| &mut s.log)?;
    v0_1::strata::pipeline::log::add_to_linker::<_, HasSelf<LogCtx>>(linker, |s| &mut s.log)
}

impl Host for LogCtx {
    fn log(&mut self, level: Level, message: String) {
        if self.lines >= MAX_LINES {
            self.dropped += 1;
            return;
        }
        self.lines += 1;
        let message = escape(truncate(&message, MAX_LINE_BYTES));
        let tag = &self.tag;
        macro_rules! emit {
            ($level:ident) => {
                tracing::$level!(
                    target: "strata::guest",
                    request_id = %tag.request_id,
                    pipeline = %tag.pipeline,
                    generation = tag.generation,
                    stage = %tag.stage,
                    digest = %tag.digest,
                    "{message}"
                )
            };
        }
        match level {
            Level::Trace => emit!(trace),
            Level::Debug => emit!(debug),
            Level::Info => emit!(info),
            Level::Warn => emit!(warn),
            Level::Error => emit!(error),
        }
    }
}

/// `text` with control characters (line breaks, terminal escapes) written
/// as escapes, so a guest's line is one line of the host's log and cannot
/// forge another or repaint an operator's terminal.
pub(crate) fn escape(text: &str) -> std::borrow::Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return std::borrow::Cow::Borrowed(text);
    }
    let mut escaped = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if c.is_control() {
            escaped.extend(c.escape_default());
        } else {
            escaped.push(c);
        }
    }
    std::borrow::Cow::Owned(escaped)
}

/// Cut `text` to at most `max` bytes on a character boundary.
pub(crate) fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn a_guest_line_cannot_forge_another() {
        assert_eq!(
            escape("ok\n2026-01-01T00:00:00Z  INFO strata: reload applied"),
            "ok\\n2026-01-01T00:00:00Z  INFO strata: reload applied"
        );
        assert_eq!(escape("\u{1b}[2Jclear"), "\\u{1b}[2Jclear");
        assert_eq!(escape("plain ünïcode"), "plain ünïcode");
    }
}
