//! The answer bank's optional embeddings: examples embedded through an
//! OpenAI-compatible `/v1/embeddings` endpoint (the local stand-in here),
//! vectors kept in the store, lookups through the embedded model, and the
//! lexical model answering whenever the endpoint cannot.

use std::time::{Duration, Instant};

use local_llm::LocalLlm;
use serde_json::json;
use strata::store::{ImportRow, Store};
use strata_tests::{TestHost, bank_data};

/// The bank stage (exact keys, then `lookup`), then a stage that escalates,
/// with the answer bank's embeddings from `base_url` under `model`.
fn manifest(base_url: &str, model: &str) -> String {
    let models = format!(
        "
[models.providers.local]
base_url = \"{base_url}\"

[models.embeddings.stand-in]
provider = \"local\"
model = \"{model}\"
timeout_ms = 2000
retries = 0
batch = 16
"
    );
    strata_tests::bank_desk(&models, "max_error = 0.1, embeddings = \"stand-in\"")
}

const CARD: &str = bank_data::CARD_ARRIVAL;

/// The bank's test questions under their intents' answers: 36 examples.
fn rows() -> Vec<ImportRow> {
    bank_data::questions()
        .into_iter()
        .map(|(question, label)| ImportRow {
            question,
            answer: bank_data::answer(label).to_owned(),
            label: None,
        })
        .collect()
}

/// A directory with the manifest and a store holding the 36 examples.
async fn seeded(llm: &LocalLlm, model: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strata.toml");
    std::fs::write(&path, manifest(&llm.base_url(), model)).unwrap();
    let store = Store::open(&dir.path().join("data")).unwrap();
    store
        .import_patterns("desk".to_owned(), rows(), "import".to_owned())
        .await
        .unwrap();
    store.close().await;
    (dir, path)
}

/// A stand-in provider and a host serving the desk with its 36 examples
/// under `model`; `before` runs first, to set the provider's faults or
/// rewrite the manifest (its path is the second argument).
async fn desk_host(
    model: &str,
    before: impl FnOnce(&LocalLlm, &std::path::Path),
) -> (LocalLlm, TestHost) {
    let llm = LocalLlm::start(local_llm::Options::default())
        .await
        .unwrap();
    let (dir, path) = seeded(&llm, model).await;
    before(&llm, &path);
    let host = TestHost::serve_with(dir, path, strata::auth::Tokens::default())
        .await
        .unwrap();
    (llm, host)
}

/// A question the bank cannot answer escalates, and a reviewer's answer
/// adds it to the bank as a 37th example.
async fn teach_a_new_answer(host: &TestHost) {
    host.answer_by_reviewer(
        "desk",
        "Do you offer savings accounts?",
        "Not yet: savings accounts come next year.",
    )
    .await;
}

/// The value of the metric line that starts with `prefix`, 0 if absent.
fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

const EMBEDDED: &str =
    "strata_pattern_lookup_features_total{pipeline=\"desk\",features=\"embeddings\"}";
const LEXICAL: &str =
    "strata_pattern_lookup_features_total{pipeline=\"desk\",features=\"lexical\"}";
const FALLBACK: &str =
    "strata_pattern_lookup_features_total{pipeline=\"desk\",features=\"lexical_fallback\"}";
const UNAVAILABLE: &str =
    "strata_embeddings_failures_total{pipeline=\"desk\",reason=\"unavailable\"}";
const TIMEOUT: &str = "strata_embeddings_failures_total{pipeline=\"desk\",reason=\"timeout\"}";

fn stored_vectors(dir: &std::path::Path, model: &str) -> i64 {
    let conn = rusqlite::Connection::open(dir.join("data").join("strata.db")).unwrap();
    conn.query_row(
        "SELECT COUNT(*) FROM example_vectors WHERE model = ?1",
        [model],
        |row| row.get(0),
    )
    .unwrap()
}

#[tokio::test]
async fn a_paraphrase_is_answered_through_embeddings_and_vectors_survive_a_restart() {
    let (llm, mut host) = desk_host("hashed-a", |_, _| {}).await;
    let path = host.dir().join("strata.toml");
    // Every example was embedded before serving, 16 a request.
    assert_eq!(llm.embedded_inputs(), 36);
    assert_eq!(llm.embedding_requests(), 3);
    assert_eq!(stored_vectors(host.dir(), "hashed-a"), 36);

    let (status, answered) = host.ask("desk", "When is my card going to arrive?").await;
    assert_eq!(status, 200, "{answered}");
    assert_eq!(answered["layer"], "cache");
    assert_eq!(answered["output"], CARD);
    assert_eq!(llm.embedded_inputs(), 37, "the question was embedded");
    let text = host.metrics().await;
    assert_eq!(metric(&text, EMBEDDED), 1.0, "{text}");
    assert_eq!(metric(&text, FALLBACK), 0.0, "{text}");

    // A restart reads the vectors back instead of embedding again.
    host.restart().await;
    assert_eq!(llm.embedded_inputs(), 37);
    let (status, again) = host.ask("desk", "When is my card going to arrive?").await;
    assert_eq!((status, &again["output"]), (200, &json!(CARD)), "{again}");
    assert_eq!(llm.embedded_inputs(), 38);

    // Another model's vectors are not these: everything is embedded again.
    std::fs::write(&path, manifest(&llm.base_url(), "hashed-b")).unwrap();
    host.restart().await;
    assert_eq!(llm.embedded_inputs(), 38 + 36);
    assert_eq!(stored_vectors(host.dir(), "hashed-b"), 36);
    host.shutdown().await;
}

#[tokio::test]
async fn with_the_endpoint_down_the_lexical_model_answers_and_the_failure_is_counted() {
    let (llm, host) = desk_host("hashed-a", |_, _| {}).await;
    let question = "When is my card going to arrive?";
    let (status, served) = host.ask("desk", question).await;
    assert_eq!((status, &served["output"]), (200, &json!(CARD)), "{served}");

    // Down: the same question is still answered, by the lexical model.
    llm.set_embeddings_down(true);
    let (status, degraded) = host.ask("desk", question).await;
    assert_eq!(status, 200, "{degraded}");
    assert_eq!(degraded["output"], CARD);
    let text = host.metrics().await;
    assert_eq!(metric(&text, FALLBACK), 1.0, "{text}");
    assert_eq!(metric(&text, UNAVAILABLE), 1.0, "{text}");
    assert_eq!(metric(&text, EMBEDDED), 1.0, "{text}");

    // Slow: past the model's timeout, the same.
    llm.set_embeddings_down(false);
    llm.set_embeddings_delay(Duration::from_millis(3000));
    let (status, slow) = host.ask("desk", question).await;
    assert_eq!((status, &slow["output"]), (200, &json!(CARD)), "{slow}");
    let text = host.metrics().await;
    assert_eq!(metric(&text, FALLBACK), 2.0, "{text}");
    assert_eq!(metric(&text, TIMEOUT), 1.0, "{text}");
    llm.set_embeddings_delay(Duration::ZERO);

    // Nothing absurd reaches the endpoint or breaks the lookup.
    let (status, empty) = host.ask("desk", "").await;
    assert!(status < 500, "{status} {empty}");
    let long = format!("when will my card arrive {}", "and ".repeat(3000));
    let (status, long) = host.ask("desk", &long).await;
    assert!(status < 500, "{status} {long}");
    // The lexical model reads 4 KiB of a question; the endpoint gets no more.
    assert!(
        llm.longest_embedded_input() <= 4096,
        "{} bytes sent",
        llm.longest_embedded_input()
    );
    host.shutdown().await;
}

#[tokio::test]
async fn a_host_started_while_the_endpoint_is_down_serves_lexically_and_embeds_later() {
    // The host starts without its embeddings endpoint.
    let (llm, host) = desk_host("hashed-a", |llm, _| llm.set_embeddings_down(true)).await;
    let question = "When is my card going to arrive?";
    let (status, answered) = host.ask("desk", question).await;
    assert_eq!(
        (status, &answered["output"]),
        (200, &json!(CARD)),
        "{answered}"
    );
    let text = host.metrics().await;
    assert_eq!(metric(&text, LEXICAL), 1.0, "{text}");
    assert_eq!(stored_vectors(host.dir(), "hashed-a"), 0);

    // Back up: the next example learned (a reviewer's answer) brings the
    // whole bank's embedding and the embedded model with it.
    llm.set_embeddings_down(false);
    teach_a_new_answer(&host).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, answered) = host.ask("desk", question).await;
        assert_eq!(status, 200, "{answered}");
        if metric(&host.metrics().await, EMBEDDED) >= 1.0 {
            assert_eq!(answered["output"], CARD);
            break;
        }
        assert!(Instant::now() < deadline, "the embedded model never came");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(stored_vectors(host.dir(), "hashed-a"), 37);
    host.shutdown().await;
}

#[tokio::test]
async fn examples_are_embedded_in_batches_slower_than_a_lookup_may_wait() {
    // Each call takes longer than a lookup's `timeout_ms` (2000), far
    // less than a batch's `batch_timeout_ms` (30000 by default).
    let (_llm, host) = desk_host("hashed-a", |llm, _| {
        llm.set_embeddings_delay(Duration::from_millis(2500))
    })
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while stored_vectors(host.dir(), "hashed-a") < 36 {
        assert!(
            Instant::now() < deadline,
            "the examples were never embedded: {}",
            host.metrics().await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(metric(&host.metrics().await, TIMEOUT), 0.0);
    // A question still waits only `timeout_ms`, then the lexical model
    // answers.
    let (status, answered) = host.ask("desk", "When is my card going to arrive?").await;
    assert_eq!(
        (status, &answered["output"]),
        (200, &json!(CARD)),
        "{answered}"
    );
    let text = host.metrics().await;
    assert_eq!(metric(&text, TIMEOUT), 1.0, "{text}");
    assert_eq!(metric(&text, FALLBACK), 1.0, "{text}");
    host.shutdown().await;
}

#[tokio::test]
async fn an_endpoint_failing_part_way_keeps_the_batches_done() {
    // Four examples a request, kept sixteen at a time: the first sixteen
    // are kept, the fifth call is answered and the sixth refused.
    let (llm, host) = desk_host("hashed-a", |llm, path| {
        let text = std::fs::read_to_string(path).unwrap();
        std::fs::write(path, text.replace("batch = 16", "batch = 4")).unwrap();
        llm.set_embeddings_down_after(5);
    })
    .await;
    // The host embeds its examples before it serves, and that pass failed
    // on its sixth call; the pass it then starts in the background fails
    // on its first, and waits.
    let deadline = Instant::now() + Duration::from_secs(60);
    while llm.embedding_requests() < 7 {
        assert!(Instant::now() < deadline, "no second pass");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(stored_vectors(host.dir(), "hashed-a"), 16);

    // Back up: the next pass embeds only what is left, and the example a
    // reviewer adds.
    llm.set_embeddings_down(false);
    let before = llm.embedded_inputs();
    teach_a_new_answer(&host).await;
    while stored_vectors(host.dir(), "hashed-a") < 37 {
        assert!(Instant::now() < deadline, "the rest was never embedded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(llm.embedded_inputs() - before, 20 + 1);
    host.shutdown().await;
}

// Multi-threaded: the stand-in serves on the runtime's workers while the
// test waits for the `strata eval` process.
#[tokio::test(flavor = "multi_thread")]
async fn eval_says_whether_the_bank_looked_up_through_embeddings() {
    let llm = LocalLlm::start(local_llm::Options::default())
        .await
        .unwrap();
    let (dir, path) = seeded(&llm, "hashed-a").await;
    let questions = dir.path().join("questions.csv");
    std::fs::write(
        &questions,
        "text,label\nWhen is my card going to arrive?,card_arrival\nMy card was stolen,card_stolen\n",
    )
    .unwrap();
    let data = dir.path().join("data");
    let args = [
        "eval",
        path.to_str().unwrap(),
        "desk",
        questions.to_str().unwrap(),
        "--json",
        "--data",
        data.to_str().unwrap(),
    ];
    let bank_lookups = || {
        let (code, stdout, stderr) =
            strata_tests::run_cli(env!("CARGO_BIN_EXE_strata-under-test"), &args);
        assert_eq!(code, 0, "{stderr}");
        serde_json::from_str::<serde_json::Value>(&stdout).unwrap()["bank_lookups"].clone()
    };
    assert_eq!(bank_lookups(), json!({"embeddings": 2}));
    // The vectors are kept: with the endpoint down the embedded model is
    // fitted from them, and every question falls back to the lexical one.
    llm.set_embeddings_down(true);
    assert_eq!(bank_lookups(), json!({"lexical_fallback": 2}));
}

#[test]
fn manifest_errors_name_the_embeddings_key_at_fault() {
    let base = manifest("http://127.0.0.1:9/v1", "m");
    let cases: Vec<(String, &str)> = vec![
        (
            base.replace("embeddings = \"stand-in\"", "embeddings = \"nope\""),
            "pipeline \"desk\", key \"answer_bank.embeddings\": no embeddings model named \
             \"nope\"; [models.embeddings] defines: stand-in",
        ),
        (
            base.replace("provider = \"local\"", "provider = \"elsewhere\""),
            "key \"models.embeddings.stand-in.provider\": no provider named \"elsewhere\"; \
             the manifest defines: local",
        ),
        (
            base.replace("batch = 16", "batch = 0"),
            "key \"models.embeddings.stand-in.batch\": 0 is outside 1..=2048",
        ),
        (
            base.replace("timeout_ms = 2000", "timeout_ms = 0"),
            "key \"models.embeddings.stand-in.timeout_ms\": 0 is outside 1..=600000",
        ),
        (
            base.replace(
                "timeout_ms = 2000",
                "timeout_ms = 2000\nbatch_timeout_ms = 600001",
            ),
            "key \"models.embeddings.stand-in.batch_timeout_ms\": 600001 is outside 1..=600000",
        ),
        (
            base.replace("model = \"m\"", "model = \" \""),
            "key \"models.embeddings.stand-in.model\": must not be empty",
        ),
        (
            base.replace("retries = 0", "retries = 11"),
            "key \"models.embeddings.stand-in.retries\": 11 is more than 10",
        ),
        (
            base.replace("batch = 16", "batch = 16\ndimensions = 3"),
            "unknown field `dimensions`",
        ),
    ];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strata.toml");
    let mut failures = Vec::new();
    for (text, expected) in &cases {
        std::fs::write(&path, text).unwrap();
        let message = match strata::manifest::Manifest::load(&path) {
            Ok(_) => "accepted".to_owned(),
            Err(error) => error.to_string(),
        };
        if !message.contains(expected) {
            failures.push(format!("expected: {expected}\n     got: {message}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    // The manifest itself is fine.
    std::fs::write(&path, &base).unwrap();
    let manifest = strata::manifest::Manifest::load(&path).unwrap();
    let spec = &manifest.models.embeddings["stand-in"];
    assert_eq!(
        (
            spec.batch,
            spec.timeout_ms,
            spec.batch_timeout_ms,
            spec.retries
        ),
        (16, 2000, 30_000, 0)
    );
}
