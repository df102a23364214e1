//! Teams of clients: a team's token names it, its pipelines, rate limit
//! and budgets hold, and over budget it is refused or served by the cheap
//! layers, as configured. The host runs as a process so the teams' tokens
//! come from its environment, as in production.

use std::path::Path;

use local_llm::{LocalLlm, Options};
use serde_json::{Value, json};
use strata_tests::{HostProcess, SMALL_RUNTIME, components, toml_str};

const CHECKOUT: &str = "checkout-token";
const SUPPORT: &str = "support-token";
const CAPPED: &str = "capped-token";

fn manifest(llm: &LocalLlm) -> String {
    format!(
        "{SMALL_RUNTIME}
[models.providers.local]
base_url = \"{base}\"

[models.tiers.small]
provider = \"local\"
model = \"echo\"
timeout_ms = 5000
retries = 0
input_usd_per_mtok = 1000.0
output_usd_per_mtok = 1000.0

# Refused once over a tiny budget; limited to two pipelines.
[teams.checkout]
token_env = \"CHECKOUT_TOKEN\"
pipelines = [\"p\", \"quick\"]
usd_per_day = 0.000001

# Served by the cheap layers once over budget.
[teams.support]
token_env = \"SUPPORT_TOKEN\"
usd_per_month = 0.000001
over_budget = \"cheap_layers\"

# Two requests a minute.
[teams.capped]
token_env = \"CAPPED_TOKEN\"
requests_per_minute = 2

[pipelines.p]
min_confidence = 0.1
[[pipelines.p.stages]]
name = \"generate\"
layer = \"generation\"
plugin = {generate}
grants = [\"config\", \"model\"]
limits = {{ timeout_ms = 20000 }}
[pipelines.p.stages.config]
small_tier = \"small\"
large_tier = \"small\"

[pipelines.quick]
[[pipelines.quick.stages]]
name = \"answer\"
layer = \"rules\"
plugin = {scripted}
grants = [\"config\", \"log\"]
config = {{ outcome = \"respond\", answer = \"done\", confidence = 1.0 }}

[pipelines.other]
[[pipelines.other.stages]]
name = \"answer\"
layer = \"rules\"
plugin = {scripted}
grants = [\"config\", \"log\"]
config = {{ outcome = \"respond\", answer = \"other\", confidence = 1.0 }}
",
        base = llm.base_url(),
        generate = toml_str(components::GENERATE),
        scripted = toml_str(components::SCRIPTED),
    )
}

fn serve(manifest: &Path, data: &Path) -> HostProcess {
    HostProcess::serve(
        env!("CARGO_BIN_EXE_strata-under-test"),
        manifest,
        |command| {
            command
                .arg("--data")
                .arg(data)
                .env("CHECKOUT_TOKEN", CHECKOUT)
                .env("SUPPORT_TOKEN", SUPPORT)
                .env("CAPPED_TOKEN", CAPPED)
                .env("STRATA_CLIENT_TOKEN", "plain-client")
                .env("STRATA_ADMIN_TOKEN", "admin-token")
                .env_remove("RUST_BACKTRACE");
        },
    )
}

async fn ask(host: &HostProcess, token: &str, pipeline: &str, input: &str) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{}/v1/pipelines/{pipeline}", host.base()))
        .bearer_auth(token)
        .json(&json!({ "input": input }))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let retry = response.headers().get("retry-after").cloned();
    let mut body: Value = response.json().await.unwrap_or(Value::Null);
    if let Some(retry) = retry {
        body["retry_after"] = json!(retry.to_str().unwrap());
    }
    (status, body)
}

async fn teams(host: &HostProcess) -> Value {
    reqwest::Client::new()
        .get(format!("{}/admin/teams", host.admin_base()))
        .bearer_auth("admin-token")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn teams_are_held_to_their_pipelines_rates_and_budgets() {
    let llm = LocalLlm::start(Options::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strata.toml");
    std::fs::write(&path, manifest(&llm)).unwrap();
    let host = serve(&path, &dir.path().join("data"));

    // A team's token is a client's credential; a pipeline outside its list
    // is refused by name.
    let (status, body) = ask(&host, CHECKOUT, "other", "hi").await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("team \"checkout\" may not call pipeline \"other\""),
        "{body}"
    );

    // One model answer spends more than the day's budget; the next request
    // is refused with 429 budget_exhausted. Requests that cost nothing were
    // allowed before.
    let (status, body) = ask(&host, CHECKOUT, "p", "How do I change my PIN?").await;
    assert_eq!(status, 200, "{body}");
    assert!(body["cost_usd"].as_f64().unwrap() > 0.0, "{body}");
    let checkout_request = body["request_id"].as_str().unwrap().to_owned();
    let (status, body) = ask(&host, CHECKOUT, "quick", "anything").await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "budget_exhausted");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("daily budget"),
        "{body}"
    );
    // Another client is not affected.
    let (status, body) = ask(&host, "plain-client", "p", "How do I change my PIN?").await;
    assert_eq!(status, 200, "{body}");

    // Over budget with cheap_layers: served, but the model is never called.
    let (status, body) = ask(&host, SUPPORT, "p", "How do I change my PIN?").await;
    assert_eq!(status, 200, "{body}");
    let calls = llm.requests();
    let (status, body) = ask(&host, SUPPORT, "p", "What is my balance?").await;
    assert_eq!(status, 202, "escalated to a person, not the model: {body}");
    assert_eq!(llm.requests(), calls, "no model call over budget");
    let (status, body) = ask(&host, SUPPORT, "quick", "anything").await;
    assert_eq!(status, 200, "the rules layer still answers: {body}");

    // Two requests a minute, then 429 with Retry-After.
    for _ in 0..2 {
        let (status, body) = ask(&host, CAPPED, "quick", "x").await;
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = ask(&host, CAPPED, "quick", "x").await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited");
    let retry: u64 = body["retry_after"].as_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{body}");

    // The operators' view: spend against budget, per team.
    let report = teams(&host).await;
    let team = |name: &str| {
        report["teams"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .cloned()
            .unwrap_or_else(|| panic!("no team {name} in {report}"))
    };
    let checkout = team("checkout");
    assert!(checkout["spend"]["today_usd"].as_f64().unwrap() > 0.000001);
    assert_eq!(checkout["over_budget_now"], true);
    assert_eq!(checkout["month"]["requests"], 1, "{checkout}");
    assert!(checkout["month"]["cost_per_answered_usd"].as_f64().unwrap() > 0.0);
    let support = team("support");
    assert_eq!(support["over_budget"], "cheap_layers");
    assert_eq!(support["month"]["requests"], 3, "{support}");
    let metrics = reqwest::Client::new()
        .get(format!("{}/metrics", host.admin_base()))
        .bearer_auth("admin-token")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("strata_team_requests_total{team=\"checkout\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("strata_team_cost_usd_total{team=\"checkout\"}"),
        "{metrics}"
    );
    // A team's rating is exported with the team.
    let rated = reqwest::Client::new()
        .post(format!("{}/v1/feedback", host.base()))
        .bearer_auth(CHECKOUT)
        .json(&json!({"request_id": checkout_request, "rating": "good"}))
        .send()
        .await
        .unwrap();
    assert_eq!(rated.status(), 200);
    let export = reqwest::Client::new()
        .get(format!("{}/v1/feedback/export", host.base()))
        .bearer_auth("admin-token")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let line: Value = serde_json::from_str(export.lines().last().unwrap()).unwrap();
    assert_eq!(line["team"], "checkout", "{export}");
    assert_eq!(line["request_id"], checkout_request);
    let capped = team("capped");
    assert_eq!(capped["spend"]["month_usd"], 0.0);
    assert_eq!(capped["over_budget_now"], false);
    assert_eq!(capped["requests_per_minute"], 2);
}

#[tokio::test]
async fn a_team_without_its_token_in_the_environment_is_a_manifest_error() {
    let llm = LocalLlm::start(Options::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("strata.toml");
    std::fs::write(&path, manifest(&llm)).unwrap();
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_strata-under-test"))
        .args(["check", path.to_str().unwrap()])
        .env_remove("CHECKOUT_TOKEN")
        .env("SUPPORT_TOKEN", SUPPORT)
        .env("CAPPED_TOKEN", CAPPED)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let said = String::from_utf8_lossy(&output.stderr);
    assert!(
        said.contains("teams.checkout.token_env")
            && said.contains("CHECKOUT_TOKEN holds no token for team \"checkout\""),
        "{said}"
    );
}
