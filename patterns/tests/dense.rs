//! Embeddings as extra features: a model fitted with example vectors finds
//! paraphrases that share meaning but not words, its nearest-neighbour part
//! goes through the approximate index, and without vectors everything falls
//! back to the lexical model.
//!
//! The embedding here is a toy with known semantics: each word counts for
//! the concept (intent) a small synonym table puts it in, plus a little
//! hashed identity, so two questions in different words about the same
//! thing get close vectors, as a real embeddings model would give them.

use strata_patterns::{Bank, Config, Model, PatternId, Via};

/// Words by concept; a question about concept `k` uses some of them.
const CONCEPTS: [&[&str]; 4] = [
    &[
        "arrive", "arrived", "delivery", "posted", "waiting", "post", "shipped", "mail", "turned",
        "courier",
    ],
    &[
        "top", "add", "money", "balance", "transfer", "deposit", "fund", "funds", "load", "cash",
    ],
    &[
        "lost",
        "stolen",
        "freeze",
        "block",
        "took",
        "thief",
        "robbed",
        "pickpocket",
        "missing",
    ],
    &[
        "pin", "forgot", "reset", "code", "passcode", "digits", "secret",
    ],
];

const DIM: usize = 24;

fn embed(text: &str) -> Vec<f32> {
    let mut v = vec![0.0f32; DIM];
    for word in text
        .to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
    {
        if let Some(k) = CONCEPTS.iter().position(|c| c.contains(&word)) {
            v[k] += 1.0;
        }
        let hash = word
            .bytes()
            .fold(7u64, |h, b| h.wrapping_mul(31).wrapping_add(u64::from(b)));
        v[CONCEPTS.len() + (hash % (DIM - CONCEPTS.len()) as u64) as usize] += 0.2;
    }
    v
}

const INTENTS: [[&str; 8]; 4] = [
    [
        "when will my card arrive",
        "my new card has not arrived yet",
        "how long does card delivery take",
        "i am still waiting for my card",
        "has my card been posted",
        "is my card in the post",
        "when is my card delivery",
        "my card never arrived",
    ],
    [
        "how do i top up my account",
        "add money to my balance",
        "top up with a bank transfer",
        "can i top up by cheque",
        "my top up did not go through",
        "what are the top up limits",
        "add money by transfer",
        "top up my balance",
    ],
    [
        "i lost my card",
        "my card was stolen",
        "how do i freeze my card",
        "someone took my card",
        "block my stolen card",
        "my card is lost",
        "freeze my lost card",
        "my card got stolen today",
    ],
    [
        "how do i change my pin",
        "i forgot my pin",
        "reset my pin number",
        "where can i change the pin",
        "my pin is blocked",
        "set a new pin code",
        "forgot the pin code",
        "change my pin code",
    ],
];

const PREFIXES: [&str; 4] = ["", "hello, ", "quick question: ", "please help: "];

/// The intents' bank; with `vectors`, every example embedded.
fn bank(vectors: bool) -> Bank {
    let mut bank = Bank::new(Config::default());
    for (i, questions) in INTENTS.iter().enumerate() {
        let id = PatternId(i as u64 + 1);
        bank.add_pattern(id, format!("answer {i}"), None, "import")
            .unwrap();
        for prefix in PREFIXES {
            for question in questions {
                let text = format!("{prefix}{question}");
                let serial = bank.add_example(id, text.clone()).unwrap();
                if vectors {
                    bank.set_vector(id, serial, &embed(&text)).unwrap();
                }
            }
        }
    }
    bank
}

#[test]
fn a_paraphrase_in_other_words_is_answered_only_with_embeddings() {
    let bank = bank(true);
    let lexical = Model::fit(&bank);
    let embedded = Model::fit_embedded(&bank).expect("every example has a vector");
    assert_eq!(embedded.embedding_dim(), Some(DIM));
    assert_eq!(embedded.stats().embedding_dim, Some(DIM));
    assert_eq!(lexical.embedding_dim(), None);

    // Hardly a word in common with any example: the lexical model cannot
    // trust an answer, the embedded one can.
    let question = "a pickpocket robbed me";
    let before = lexical.lookup(question);
    assert!(
        before.is_none_or(|m| !m.trusted),
        "the lexical model should not trust {before:?}"
    );
    let found = embedded
        .lookup_embedded(question, &embed(question))
        .expect("a match");
    assert_eq!(found.pattern, PatternId(3), "{found:?}");
    assert!(
        found.trusted,
        "{found:?} below {:?}",
        embedded.stats().neighbour
    );

    // An ordinary paraphrase still works, through the classifier.
    let question = "hi, when does my new card arrive?";
    let found = embedded
        .lookup_embedded(question, &embed(question))
        .expect("a match");
    assert_eq!(found.pattern, PatternId(1));
    assert!(found.trusted, "{found:?}");
}

#[test]
fn without_vectors_the_lexical_model_is_the_one_there_is() {
    // An example without a vector: no embedded fit yet.
    let mut partial = bank(true);
    let serial = partial
        .add_example(PatternId(1), "where is my card")
        .unwrap();
    assert!(Model::fit_embedded(&partial).is_none());
    assert!(Model::fit_embedded(&bank(false)).is_none());
    assert!(Model::fit_embedded(&Bank::default()).is_none());
    partial
        .set_vector(PatternId(1), serial, &embed("where is my card"))
        .unwrap();
    assert!(Model::fit_embedded(&partial).is_some());

    let bank = bank(true);
    let embedded = Model::fit_embedded(&bank).unwrap();
    let question = "my card has not arrived";
    // Asked without a vector, or with one of the wrong length or with no
    // direction, an embedded model answers nothing; the caller checks the
    // length first and asks the lexical model instead.
    assert_eq!(embedded.lookup(question), None);
    assert_eq!(embedded.lookup_embedded(question, &[1.0, 0.0]), None);
    assert_eq!(embedded.lookup_embedded(question, &[0.0; DIM]), None);
    assert_eq!(embedded.lookup_embedded(question, &[f32::NAN; DIM]), None);
    // A lexical model ignores a vector.
    let lexical = Model::fit(&bank);
    assert_eq!(
        lexical.lookup_embedded(question, &embed(question)),
        lexical.lookup(question)
    );
}

#[test]
fn examples_added_after_the_fit_are_searched_exactly_and_removed_patterns_never_answer() {
    let mut bank = bank(true);
    let model = Model::fit_embedded(&bank).unwrap();
    let id = PatternId(9);
    bank.add_pattern(id, "Here is how to order a new card.", None, "human")
        .unwrap();
    let text = "courier shipped card";
    let serial = bank.add_example(id, text).unwrap();
    // Not embedded yet: the refreshed model cannot find it by meaning.
    let refreshed = model.refresh(&bank);
    let q = "courier shipped card";
    assert_ne!(
        refreshed.lookup_embedded(q, &embed(q)).map(|m| m.pattern),
        Some(id)
    );
    bank.set_vector(id, serial, &embed(text)).unwrap();
    let refreshed = model.refresh(&bank);
    let found = refreshed.lookup_embedded(q, &embed(q)).expect("a match");
    assert_eq!((found.pattern, found.via), (id, Via::Neighbour));
    assert_eq!(refreshed.stats().examples_since_fit, 1);

    // A removed pattern is never answered, whichever matcher finds it.
    bank.remove_pattern(PatternId(3)).unwrap();
    let refreshed = model.refresh(&bank);
    let q = "a pickpocket robbed me";
    if let Some(found) = refreshed.lookup_embedded(q, &embed(q)) {
        assert_ne!(found.pattern, PatternId(3), "{found:?}");
    }
}

#[test]
fn empty_and_huge_questions_are_safe_with_embeddings() {
    let bank = bank(true);
    let model = Model::fit_embedded(&bank).unwrap();
    // The vector carries the lookup when the text has no feature.
    let _ = model.lookup_embedded("", &embed("lost"));
    let huge = format!("i lost my card {}", "x".repeat(1 << 20));
    let found = model.lookup_embedded(&huge, &embed("i lost my card"));
    assert_eq!(found.map(|m| m.pattern), Some(PatternId(3)));
}

#[test]
fn an_embedded_fit_survives_a_snapshot() {
    let bank = bank(true);
    let model = Model::fit_embedded(&bank).unwrap();
    let json = serde_json::to_string(&**model.fitted()).unwrap();
    let back = Model::from_fitted(
        std::sync::Arc::new(serde_json::from_str(&json).unwrap()),
        &bank,
    );
    for q in ["a pickpocket robbed me", "reset my passcode", "load cash"] {
        assert_eq!(
            model.lookup_embedded(q, &embed(q)),
            back.lookup_embedded(q, &embed(q)),
            "{q}"
        );
    }
}
