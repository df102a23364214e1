//! A small labelled set of questions for the answer bank's tests: three
//! intents, a dozen phrasings each, and one approved answer per intent.

/// Three intents, each phrased a dozen ways.
pub fn questions() -> Vec<(String, &'static str)> {
    let card = [
        "where is my new card",
        "my card has not arrived yet",
        "when will my card arrive",
        "how long does the card take to arrive",
        "still waiting for my card",
        "card delivery is taking long",
        "has my card been sent",
        "i have not received my card",
        "when does the card come",
        "my card never arrived",
        "is my card on its way",
        "track my card delivery",
    ];
    let pin = [
        "how do i change my pin",
        "i want a new pin",
        "can i reset my pin",
        "change the pin of my card",
        "where can i change my pin",
        "update my pin number",
        "i need to set a different pin",
        "pin change please",
        "how to pick a new pin",
        "can my pin be changed",
        "modify my pin",
        "set a new pin on my card",
    ];
    let top_up = [
        "how do i top up my account",
        "add money to my account",
        "can i top up with a card",
        "top up by bank transfer",
        "ways to add funds",
        "put money into my account",
        "how can i load money",
        "topping up my balance",
        "add cash to my account",
        "fund my account",
        "how to deposit money",
        "top up options",
    ];
    let mut rows = Vec::new();
    for (texts, label) in [
        (&card[..], "card_arrival"),
        (&pin[..], "change_pin"),
        (&top_up[..], "top_up"),
    ] {
        for text in texts {
            rows.push(((*text).to_owned(), label));
        }
    }
    rows
}

/// The card-arrival intent's approved answer.
pub const CARD_ARRIVAL: &str = "Cards arrive within 5 working days.";

/// Each intent's label and approved answer.
pub const INTENTS: [(&str, &str); 3] = [
    ("card_arrival", CARD_ARRIVAL),
    (
        "change_pin",
        "Change your PIN in the app under Card > Security.",
    ),
    ("top_up", "Top up by card or bank transfer in the app."),
];

/// The approved answer of the intent labelled `label`.
pub fn answer(label: &str) -> &'static str {
    INTENTS
        .iter()
        .find(|(l, _)| *l == label)
        .map(|(_, answer)| *answer)
        .unwrap_or_else(|| panic!("no intent is labelled {label}"))
}

/// The questions (with `header`) and the answers file, written into `dir`.
pub fn write_dataset(
    dir: &std::path::Path,
    header: &str,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let file = dir.join("questions.csv");
    let mut csv = format!("{header}\n");
    for (text, label) in questions() {
        csv.push_str(&format!("{text},{label}\n"));
    }
    std::fs::write(&file, csv).unwrap();
    let answers = dir.join("answers.csv");
    let mut answers_csv = "label,answer\n".to_owned();
    for (label, answer) in INTENTS {
        answers_csv.push_str(&format!("{label},\"{answer}\"\n"));
    }
    std::fs::write(&answers, answers_csv).unwrap();
    (file, answers)
}
