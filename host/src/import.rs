//! Reading files of example questions for `strata bank import` and
//! `strata eval`: CSV with a header, or JSON lines (the feedback export's
//! format among them). Every bad row is reported by number, and a file with
//! any bad row is refused whole, so nothing is half-imported.
//!
//! CSV columns, by header name:
//! - the question: `question`, `text` or `input`;
//! - the answer: `answer`, or a label (`label`, `category` or `intent`)
//!   whose answer a separate `label,answer` file gives.
//!
//! JSON lines: objects with `question` (or `input`, `text`) and `answer`
//! (or `correction`), optionally `label`. Lines of the feedback export are
//! understood: `resolution` and `correction` lines import their input with
//! the reviewer's answer; ratings and proposals are passed over.

use std::collections::HashMap;
use std::path::Path;

use crate::store::ImportRow;

/// Rows with a label and the labels' answers.
#[derive(Debug, Clone, PartialEq)]
pub struct Labelled {
    /// The question.
    pub question: String,
    /// Its label, if the file gives one.
    pub label: Option<String>,
    /// Its answer, if the file (or the answers file) gives one.
    pub answer: Option<String>,
}

/// Why a file was refused.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {}", .problems.join("; "))]
pub struct ImportError {
    /// The file.
    pub file: String,
    /// What is wrong, row by row (at most the first 20, then a count).
    pub problems: Vec<String>,
}

const MOST_PROBLEMS: usize = 20;

/// The longest question or answer accepted.
const MAX_TEXT_BYTES: usize = 16 * 1024;

/// The problems found reading one file, row by row: the file is taken
/// whole or refused whole, naming every bad row.
struct Problems<'a> {
    file: &'a Path,
    found: Vec<String>,
}

impl<'a> Problems<'a> {
    fn new(file: &'a Path) -> Self {
        Problems {
            file,
            found: Vec::new(),
        }
    }

    /// Note what is wrong `at` a row or line.
    fn add(&mut self, at: impl std::fmt::Display, why: impl std::fmt::Display) {
        self.found.push(format!("{at}: {why}"));
    }

    /// `value` if nothing was found wrong, else the refusal.
    fn finish<T>(self, value: T) -> Result<T, ImportError> {
        if self.found.is_empty() {
            Ok(value)
        } else {
            Err(refuse(self.file, self.found))
        }
    }
}

fn refuse(file: &Path, mut problems: Vec<String>) -> ImportError {
    if problems.len() > MOST_PROBLEMS {
        let more = problems.len() - MOST_PROBLEMS;
        problems.truncate(MOST_PROBLEMS);
        problems.push(format!("and {more} more"));
    }
    ImportError {
        file: file.display().to_string(),
        problems,
    }
}

/// Read `file` (CSV or JSON lines) into labelled rows. `answers`, a
/// `label,answer` CSV, gives the answers of rows that only have a label.
pub fn read(file: &Path, answers: Option<&Path>) -> Result<Vec<Labelled>, ImportError> {
    let answers = match answers {
        Some(path) => Some(read_answers(path)?),
        None => None,
    };
    let text = std::fs::read_to_string(file)
        .map_err(|e| refuse(file, vec![format!("cannot read it: {e}")]))?;
    let json = file
        .extension()
        .is_some_and(|e| e == "jsonl" || e == "ndjson")
        || text.trim_start().starts_with('{');
    let mut rows = if json {
        read_json_lines(file, &text)?
    } else {
        read_csv(file, &text)?
    };
    if let Some(answers) = &answers {
        let mut problems = Problems::new(file);
        for (index, row) in rows.iter_mut().enumerate() {
            if row.answer.is_none()
                && let Some(label) = &row.label
            {
                match answers.get(label) {
                    Some(answer) => row.answer = Some(answer.clone()),
                    None => problems.add(
                        format_args!("row {}", index + 2),
                        format_args!("label \"{label}\" has no answer in the answers file"),
                    ),
                }
            }
        }
        problems.finish(())?;
    }
    Ok(rows)
}

/// The rows as importable (question, answer, label) triples; a row without
/// an answer is an error naming it.
pub fn importable(file: &Path, rows: &[Labelled]) -> Result<Vec<ImportRow>, ImportError> {
    let mut problems = Problems::new(file);
    let mut out = Vec::with_capacity(rows.len());
    for (index, row) in rows.iter().enumerate() {
        match &row.answer {
            Some(answer) => out.push(ImportRow {
                question: row.question.clone(),
                answer: answer.clone(),
                label: row.label.clone(),
            }),
            None => problems.add(
                format_args!("row {}", index + 2),
                "no answer (give an answer column, or labels and --answers)",
            ),
        }
    }
    problems.finish(out)
}

fn column(headers: &csv::StringRecord, names: &[&str]) -> Option<usize> {
    headers
        .iter()
        .position(|h| names.iter().any(|n| h.trim().eq_ignore_ascii_case(n)))
}

fn check_text(what: &str, text: &str) -> Result<String, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err(format!("the {what} is empty"));
    }
    if text.len() > MAX_TEXT_BYTES {
        return Err(format!(
            "the {what} is {} bytes, over {MAX_TEXT_BYTES}",
            text.len()
        ));
    }
    Ok(text.to_owned())
}

/// One row from its fields as a file gives them: the question is required,
/// and so is an answer or a label; blank ones count as missing.
fn labelled(
    question: Option<String>,
    answer: Option<String>,
    label: Option<String>,
) -> Result<Labelled, String> {
    let given = |text: Option<String>, what: &str| match text {
        Some(text) if !text.trim().is_empty() => check_text(what, &text).map(Some),
        _ => Ok(None),
    };
    let question = check_text("question", &question.unwrap_or_default())?;
    let answer = given(answer, "answer")?;
    let label = given(label, "label")?;
    if answer.is_none() && label.is_none() {
        return Err("neither an answer nor a label".to_owned());
    }
    Ok(Labelled {
        question,
        label,
        answer,
    })
}

fn read_csv(file: &Path, text: &str) -> Result<Vec<Labelled>, ImportError> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(false)
        .from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| refuse(file, vec![format!("cannot read the header: {e}")]))?
        .clone();
    let question = column(&headers, &["question", "text", "input"]);
    let answer = column(&headers, &["answer"]);
    let label = column(&headers, &["label", "category", "intent"]);
    let Some(question) = question else {
        return Err(refuse(
            file,
            vec!["the header has no question column (question, text or input)".to_owned()],
        ));
    };
    if answer.is_none() && label.is_none() {
        return Err(refuse(
            file,
            vec!["the header has neither an answer nor a label column".to_owned()],
        ));
    }
    let mut rows = Vec::new();
    let mut problems = Problems::new(file);
    for (index, record) in reader.records().enumerate() {
        let at = format!("row {}", index + 2);
        let record = match record {
            Ok(record) => record,
            Err(e) => {
                problems.add(at, e);
                continue;
            }
        };
        let field = |at: Option<usize>| at.and_then(|at| record.get(at)).map(str::to_owned);
        match labelled(field(Some(question)), field(answer), field(label)) {
            Ok(row) => rows.push(row),
            Err(why) => problems.add(at, why),
        }
    }
    problems.finish(rows)
}

fn read_json_lines(file: &Path, text: &str) -> Result<Vec<Labelled>, ImportError> {
    let mut rows = Vec::new();
    let mut problems = Problems::new(file);
    for (index, line) in text.lines().enumerate() {
        let at = format!("line {}", index + 1);
        if line.trim().is_empty() {
            continue;
        }
        let value: serde_json::Value = match serde_json::from_str(line) {
            Ok(value) => value,
            Err(e) => {
                problems.add(at, format_args!("not JSON: {e}"));
                continue;
            }
        };
        let text_of = |names: &[&str]| {
            names
                .iter()
                .find_map(|n| value.get(*n).and_then(|v| v.as_str()))
                .map(str::to_owned)
        };
        // Lines of the feedback export: only what a reviewer approved.
        if let Some(kind) = value.get("kind").and_then(|k| k.as_str())
            && !matches!(kind, "resolution" | "correction")
        {
            continue;
        }
        let row = labelled(
            text_of(&["question", "input", "text"]),
            text_of(&["answer_approved", "correction", "answer"]),
            text_of(&["label", "intent", "category"]),
        );
        match row {
            Ok(row) => rows.push(row),
            Err(why) => problems.add(at, why),
        }
    }
    problems.finish(rows)
}

/// A `label,answer` CSV.
pub fn read_answers(file: &Path) -> Result<HashMap<String, String>, ImportError> {
    let text = std::fs::read_to_string(file)
        .map_err(|e| refuse(file, vec![format!("cannot read it: {e}")]))?;
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| refuse(file, vec![format!("cannot read the header: {e}")]))?
        .clone();
    let (Some(label), Some(answer)) = (
        column(&headers, &["label", "category", "intent"]),
        column(&headers, &["answer"]),
    ) else {
        return Err(refuse(
            file,
            vec!["the header must name a label and an answer column".to_owned()],
        ));
    };
    let mut answers = HashMap::new();
    let mut problems = Problems::new(file);
    for (index, record) in reader.records().enumerate() {
        let at = format!("row {}", index + 2);
        match record {
            Ok(record) => {
                let label = record.get(label).unwrap_or_default().trim().to_owned();
                match check_text("answer", record.get(answer).unwrap_or_default()) {
                    Ok(_) if label.is_empty() => problems.add(at, "no label"),
                    Ok(text) => {
                        if answers.insert(label.clone(), text).is_some() {
                            problems.add(at, format_args!("label \"{label}\" appears twice"));
                        }
                    }
                    Err(why) => problems.add(at, why),
                }
            }
            Err(e) => problems.add(at, e),
        }
    }
    problems.finish(answers)
}

/// Which part of a seeded split to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Part {
    /// The rows to learn from (80 % of each label by default).
    Train,
    /// The rows held out for measurement.
    HeldOut,
}

/// Keep `part` of a stratified split (seed, held-out fraction) of `rows`;
/// every row needs a label.
pub fn split(
    file: &Path,
    rows: Vec<Labelled>,
    part: Part,
    seed: u64,
    fraction: f64,
) -> Result<Vec<Labelled>, ImportError> {
    let mut labels = Vec::with_capacity(rows.len());
    for (index, row) in rows.iter().enumerate() {
        match &row.label {
            Some(label) => labels.push(label.clone()),
            None => {
                return Err(refuse(
                    file,
                    vec![format!(
                        "row {}: a split needs a label on every row",
                        index + 2
                    )],
                ));
            }
        }
    }
    let split = strata_patterns::split::holdout(&labels, seed, fraction);
    let keep = match part {
        Part::Train => split.train,
        Part::HeldOut => split.held_out,
    };
    let mut rows: Vec<Option<Labelled>> = rows.into_iter().map(Some).collect();
    Ok(keep.into_iter().filter_map(|i| rows[i].take()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn csv_with_labels_and_an_answers_file() {
        let dir = tempfile::tempdir().unwrap();
        let data = write(
            dir.path(),
            "d.csv",
            "text,category\nWhere is my card?,card_arrival\n\"Hi, card?\",card_arrival\n",
        );
        let answers = write(
            dir.path(),
            "a.csv",
            "label,answer\ncard_arrival,\"In 5 days, usually.\"\n",
        );
        let rows = read(&data, Some(&answers)).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].question, "Hi, card?");
        assert_eq!(rows[1].answer.as_deref(), Some("In 5 days, usually."));
        assert_eq!(importable(&data, &rows).unwrap().len(), 2);
    }

    #[test]
    fn bad_rows_are_named_and_nothing_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let data = write(
            dir.path(),
            "d.csv",
            "question,answer\nok?,yes\n,no question\nlonely,\n",
        );
        let error = read(&data, None).unwrap_err().to_string();
        assert!(error.contains("row 3: the question is empty"), "{error}");
        assert!(
            error.contains("row 4: neither an answer nor a label"),
            "{error}"
        );
        let data = write(dir.path(), "l.csv", "text,label\nq,unknown\n");
        let answers = write(dir.path(), "a.csv", "label,answer\nknown,x\n");
        let error = read(&data, Some(&answers)).unwrap_err().to_string();
        assert!(error.contains("label \"unknown\" has no answer"), "{error}");
        let data = write(dir.path(), "n.csv", "what,ever\na,b\n");
        assert!(
            read(&data, None)
                .unwrap_err()
                .to_string()
                .contains("no question column")
        );
    }

    #[test]
    fn the_feedback_export_imports_back() {
        let dir = tempfile::tempdir().unwrap();
        let data = write(
            dir.path(),
            "f.jsonl",
            concat!(
                "{\"kind\":\"resolution\",\"input\":\"card declined?\",\"answer\":null,\"correction\":\"Frozen card.\"}\n",
                "{\"kind\":\"rating\",\"input\":\"x\",\"rating\":\"good\"}\n",
                "{\"kind\":\"correction\",\"input\":\"two cards?\",\"answer\":\"No.\",\"correction\":\"Yes.\"}\n",
            ),
        );
        let rows = importable(&data, &read(&data, None).unwrap()).unwrap();
        assert_eq!(
            rows.iter()
                .map(|r| (r.question.as_str(), r.answer.as_str()))
                .collect::<Vec<_>>(),
            vec![("card declined?", "Frozen card."), ("two cards?", "Yes.")]
        );
        let bad = write(
            dir.path(),
            "b.jsonl",
            "{\"question\":\"q\",\"answer\":\"a\"}\nnot json\n",
        );
        assert!(
            read(&bad, None)
                .unwrap_err()
                .to_string()
                .contains("line 2: not JSON")
        );
    }
}
