//! `strata:pipeline/log`: guest log lines go into the host's tracing log,
//! tagged with the pipeline, stage and request, and bounded so that a stage
//! cannot flood the log.

use crate::runtime::StageState;
use crate::runtime::bindings::v0_2::strata::pipeline::log::{Host, Level};

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
