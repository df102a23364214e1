//! `strata:pipeline/log`: guest log lines go into the host's tracing log,
//! tagged with the pipeline, stage and request, and bounded so that a stage
//! cannot flood the log.

use crate::runtime::StageState;
use crate::runtime::bindings::strata::pipeline::log::{Host, Level};

/// The most lines one invocation may log; later lines are counted, not logged.
pub(crate) const MAX_LINES: u32 = 256;
/// The longest line logged; longer ones are cut.
pub(crate) const MAX_LINE_BYTES: usize = 4 * 1024;

impl Host for StageState {
    fn log(&mut self, level: Level, message: String) {
        if self.log_lines >= MAX_LINES {
            self.log_lines_dropped += 1;
            return;
        }
        self.log_lines += 1;
        let message = truncate(&message, MAX_LINE_BYTES);
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
