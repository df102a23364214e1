//! Traffic recording: one JSON line per request of a recording pipeline,
//! written by a thread of its own to a size-bounded, rotating log under the
//! data directory (`traffic/PIPELINE.jsonl`, then `.1.jsonl`, `.2.jsonl`,
//! ... up to `keep` old files). What is recorded is the request as it left
//! the stage named by `record.after` (so redaction has run), with how the
//! pipeline decided it, the deciding stage and the generation:
//!
//! ```json
//! {"at": 1764100000000, "request_id": "...", "pipeline": "support", "generation": 3,
//!  "after": "redact", "input": "...", "attributes": {...},
//!  "status": "answered", "stage": "faq", "layer": "rules", "text": "..."}
//! ```
//!
//! `text` is what the outcome carried: the answer, the escalation reason or
//! the rejection (or failure) message. `strata replay` reads these lines.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};

use serde::{Deserialize, Serialize};

use crate::manifest::RecordSpec;
use crate::pipeline::Execution;

/// Lines queued per pipeline before new ones are dropped (and counted).
const QUEUE: usize = 4096;

/// How long the writer lets lines gather before it writes them.
const LINGER: std::time::Duration = std::time::Duration::from_millis(2);

/// One recorded request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Line {
    /// When it finished (Unix milliseconds).
    pub at: i64,
    /// The request id.
    pub request_id: String,
    /// The pipeline.
    pub pipeline: String,
    /// The generation that served it.
    pub generation: u64,
    /// The stage after which the request was recorded.
    pub after: String,
    /// The input as it left that stage.
    pub input: String,
    /// The attributes as they left that stage.
    pub attributes: std::collections::BTreeMap<String, String>,
    /// answered, escalated, rejected or failed.
    pub status: String,
    /// The deciding stage (none for the fallthrough).
    pub stage: Option<String>,
    /// Its layer.
    pub layer: Option<String>,
    /// The answer, reason or message.
    pub text: String,
}

impl Line {
    /// The line for a finished execution, if it got past the recording point.
    pub fn of(execution: &Execution, spec: &RecordSpec) -> Option<Line> {
        let recorded = execution.recorded.as_ref()?;
        let (text, by) = (execution.verdict.text(), execution.verdict.decided_by());
        Some(Line {
            at: crate::store::now_millis(),
            request_id: recorded.id.clone(),
            pipeline: recorded.pipeline.clone(),
            generation: execution.generation,
            after: spec.after.clone(),
            input: recorded.input.clone(),
            attributes: recorded.attributes.clone(),
            status: execution.verdict.status().as_str().to_owned(),
            stage: by.map(|b| b.stage.to_string()),
            layer: by.map(|b| b.layer.to_string()),
            text,
        })
    }
}

/// The recorders of every recording pipeline.
pub struct Recorders {
    directory: PathBuf,
    logs: Mutex<HashMap<String, (RecordSpec, SyncSender<String>)>>,
}

impl Recorders {
    /// Recorders writing under `data_dir/traffic`.
    pub fn new(data_dir: &Path) -> Recorders {
        Recorders {
            directory: data_dir.join("traffic"),
            logs: Mutex::new(HashMap::new()),
        }
    }

    /// Stop `pipeline`'s writer when the generation being published records
    /// it differently (`spec`) or not at all (`None`); the next line starts
    /// one with the new settings.
    pub fn configure(&self, pipeline: &str, spec: Option<&RecordSpec>) {
        let mut logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        if logs.get(pipeline).is_some_and(|(s, _)| Some(s) != spec) {
            // Dropping the sender ends the writer once it has written what
            // is queued.
            logs.remove(pipeline);
        }
    }

    /// Queue `line` for `pipeline`'s log, started with `spec` on first use
    /// (and after [`Recorders::configure`] stopped it). Never blocks: when
    /// the writer is behind, the line is dropped and a warning logged.
    pub fn record(&self, spec: &RecordSpec, line: &Line) {
        let Ok(text) = serde_json::to_string(line) else {
            return;
        };
        let mut logs = self.logs.lock().unwrap_or_else(|e| e.into_inner());
        if !logs.contains_key(&line.pipeline) {
            match RotatingLog::open(&self.directory, &line.pipeline, spec) {
                Ok(log) => {
                    let (sender, queue) = sync_channel::<String>(QUEUE);
                    let spawned = std::thread::Builder::new()
                        .name(format!("strata-record-{}", line.pipeline))
                        .spawn(move || log.run(queue));
                    if let Err(error) = spawned {
                        tracing::error!(%error, "cannot start the traffic recorder");
                        return;
                    }
                    logs.insert(line.pipeline.clone(), (spec.clone(), sender));
                }
                Err(error) => {
                    tracing::error!(pipeline = %line.pipeline, %error, "cannot open the traffic log");
                    return;
                }
            }
        }
        if let Some((_, sender)) = logs.get(&line.pipeline) {
            match sender.try_send(text) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    tracing::warn!(pipeline = %line.pipeline, "traffic recorder behind; a line was dropped");
                }
                Err(TrySendError::Disconnected(_)) => {
                    logs.remove(&line.pipeline);
                }
            }
        }
    }
}

struct RotatingLog {
    path: PathBuf,
    file: BufWriter<File>,
    size: u64,
    max: u64,
    keep: u32,
}

impl RotatingLog {
    fn open(directory: &Path, pipeline: &str, spec: &RecordSpec) -> std::io::Result<RotatingLog> {
        std::fs::create_dir_all(directory)?;
        let path = directory.join(format!("{pipeline}.jsonl"));
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(RotatingLog {
            path,
            file: BufWriter::new(file),
            size,
            max: spec.max_mib << 20,
            keep: spec.keep,
        })
    }

    fn run(mut self, queue: std::sync::mpsc::Receiver<String>) {
        while let Ok(line) = queue.recv() {
            // Let lines gather: one wake-up and one write serve many.
            std::thread::sleep(LINGER);
            self.write_logged(&line);
            while let Ok(next) = queue.try_recv() {
                self.write_logged(&next);
            }
            // Flushed whenever the queue is drained: a reader sees whole lines.
            let _ = self.file.flush();
        }
    }

    fn write_logged(&mut self, line: &str) {
        if let Err(error) = self.write(line) {
            tracing::error!(path = %self.path.display(), %error, "cannot write the traffic log");
        }
    }

    fn write(&mut self, line: &str) -> std::io::Result<()> {
        let bytes = line.len() as u64 + 1;
        if self.size > 0 && self.size + bytes > self.max {
            self.rotate()?;
        }
        self.file.write_all(line.as_bytes())?;
        self.file.write_all(b"\n")?;
        self.size += bytes;
        Ok(())
    }

    /// `p.jsonl` becomes `p.1.jsonl`, `p.1.jsonl` becomes `p.2.jsonl`, ...;
    /// the oldest beyond `keep` is deleted.
    fn rotate(&mut self) -> std::io::Result<()> {
        self.file.flush()?;
        let numbered = |n: u32| self.path.with_extension(format!("{n}.jsonl"));
        if self.keep == 0 {
            std::fs::remove_file(&self.path)?;
        } else {
            let _ = std::fs::remove_file(numbered(self.keep));
            for n in (1..self.keep).rev() {
                let _ = std::fs::rename(numbered(n), numbered(n + 1));
            }
            std::fs::rename(&self.path, numbered(1))?;
        }
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        self.file = BufWriter::new(file);
        self.size = 0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logs_rotate_and_keep_a_bounded_number_of_files() {
        let dir = tempfile::tempdir().unwrap();
        let spec = RecordSpec {
            after: "x".into(),
            max_mib: 1,
            keep: 2,
        };
        let mut log = RotatingLog::open(dir.path(), "p", &spec).unwrap();
        let line = "x".repeat(300 * 1024);
        for _ in 0..12 {
            log.write(&line).unwrap();
        }
        log.file.flush().unwrap();
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, ["p.1.jsonl", "p.2.jsonl", "p.jsonl"]);
        for name in names {
            let size = std::fs::metadata(dir.path().join(name)).unwrap().len();
            assert!(size <= 1 << 20, "{size}");
        }
    }
}
