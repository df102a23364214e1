//! What the console relies on, over plain HTTP: sessions in place of
//! tokens (with their CSRF check and roles), releasing a claimed ticket,
//! similar answers, and the dashboard's traffic figures.

use serde_json::{Value, json};
use strata::auth::Tokens;
use strata_tests::{SMALL_RUNTIME, TestHost, components, toml_str};

const REVIEWER: &str = "reviewer-secret";
const ADMIN: &str = "admin-secret";

fn manifest() -> String {
    format!(
        "{SMALL_RUNTIME}
[pipelines.desk]
[[pipelines.desk.stages]]
name = \"triage\"
layer = \"rules\"
plugin = {}
grants = [\"config\", \"log\"]
config = {{ outcome = \"escalate\", reason = \"needs a person\", draft = \"a draft\" }}
",
        toml_str(components::SCRIPTED)
    )
}

async fn host() -> TestHost {
    TestHost::start_in(
        tempfile::tempdir().unwrap(),
        &manifest(),
        Tokens::new(None, Some(REVIEWER.into()), Some(ADMIN.into())),
    )
    .await
}

/// Sign in with `token`; the session cookie and the CSRF token.
async fn sign_in(host: &TestHost, base: &str, token: &str) -> (String, String) {
    let response = reqwest::Client::new()
        .post(format!("{base}/console/login"))
        .json(&json!({ "token": token }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let cookie = response
        .headers()
        .get("set-cookie")
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(cookie.contains(attribute), "{cookie}");
    }
    let pair = cookie.split(';').next().unwrap().to_owned();
    // The page carries the CSRF token for its scripts.
    let page = reqwest::Client::new()
        .get(format!("{}/console/queue", host.base()))
        .header("cookie", &pair)
        .send()
        .await
        .unwrap();
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(csp.contains("script-src 'self'"), "{csp}");
    let html = page.text().await.unwrap();
    let csrf = html
        .split("name=\"csrf-token\" content=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no CSRF token in {html}"))
        .to_owned();
    (pair, csrf)
}

#[tokio::test]
async fn a_session_stands_in_for_a_token_with_csrf_and_roles() {
    let host = host().await;
    let (_, body) = host.ask("desk", "help").await;
    let ticket = body["ticket"]["id"].as_i64().unwrap();
    let (cookie, csrf) = sign_in(&host, host.base(), REVIEWER).await;
    let client = reqwest::Client::new();
    let base = host.base();

    // Reading needs only the session.
    let (status, body) = host
        .send(
            client
                .get(format!("{base}/v1/tickets"))
                .header("cookie", &cookie),
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // A change without the CSRF token is refused, and changes nothing.
    let claim = format!("{base}/v1/tickets/{ticket}/claim");
    let (status, body) = host
        .send(
            client
                .post(&claim)
                .header("cookie", &cookie)
                .json(&json!({})),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["error"]["code"], "csrf");
    let (status, body) = host
        .send(
            client
                .post(&claim)
                .header("cookie", &cookie)
                .header("x-csrf-token", &csrf)
                .json(&json!({})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(
        body["claimed_by"]
            .as_str()
            .unwrap()
            .starts_with("reviewer:"),
        "{body}"
    );

    // A reviewer's session is not an admin's; a forged cookie is nobody's.
    let (status, body) = host
        .send(
            client
                .get(format!("{}/admin/pipelines", host.admin_base()))
                .header("cookie", &cookie),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = host
        .send(
            client
                .get(format!("{base}/v1/tickets"))
                .header("cookie", "strata_session=7b7d.00"),
        )
        .await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"]["code"], "session_expired");

    // A wrong token signs nobody in.
    let response = client
        .post(format!("{base}/console/login"))
        .json(&json!({"token": "guess"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert!(response.headers().get("set-cookie").is_none());
    host.shutdown().await;
}

#[tokio::test]
async fn a_claimed_ticket_is_released_by_its_holder_or_an_admin() {
    let host = host().await;
    let (_, body) = host.ask("desk", "help").await;
    let ticket = body["ticket"]["id"].as_i64().unwrap();
    let post = |path: String, token: &'static str| {
        host.request(reqwest::Method::POST, &path)
            .bearer_auth(token)
            .json(&json!({}))
    };

    // Not claimed: nothing to release.
    let (status, body) = host
        .send(post(format!("/v1/tickets/{ticket}/release"), REVIEWER))
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(
        body["error"]["message"],
        format!("ticket {ticket} is not claimed")
    );

    let (status, _) = host
        .send(post(format!("/v1/tickets/{ticket}/claim"), REVIEWER))
        .await;
    assert_eq!(status, 200);
    let (status, body) = host
        .send(post(format!("/v1/tickets/{ticket}/release"), REVIEWER))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "open");
    assert_eq!(body["claimed_by"], Value::Null);

    // Claimed by the reviewer, released by an admin.
    host.send(post(format!("/v1/tickets/{ticket}/claim"), REVIEWER))
        .await;
    let (status, body) = host
        .send(post(format!("/v1/tickets/{ticket}/release"), ADMIN))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["state"], "open");

    // The bank has nothing approved yet: no similar answer, said plainly.
    let (status, body) = host
        .send(
            host.request(
                reqwest::Method::GET,
                &format!("/v1/tickets/{ticket}/similar"),
            )
            .bearer_auth(REVIEWER),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["similar"], json!([]));
    host.shutdown().await;
}

#[tokio::test]
async fn traffic_figures_count_answers_by_layer_and_time_to_value() {
    let host = host().await;
    let (_, first) = host.ask("desk", "one").await;
    host.ask("desk", "two").await;
    let ticket = first["ticket"]["id"].as_i64().unwrap();
    let (status, _) = host
        .send(
            host.request(
                reqwest::Method::POST,
                &format!("/v1/tickets/{ticket}/resolve"),
            )
            .bearer_auth(REVIEWER)
            .json(&json!({"answer": "done"})),
        )
        .await;
    assert_eq!(status, 200);
    let admin = |path: &str| {
        reqwest::Client::new()
            .get(format!("{}{path}", host.admin_base()))
            .bearer_auth(ADMIN)
    };
    let (status, traffic) = host
        .send(admin("/admin/pipelines/desk/traffic?hours=24"))
        .await;
    assert_eq!(status, 200, "{traffic}");
    assert_eq!(traffic["requests"], 2);
    assert_eq!(traffic["answered"], 1);
    assert_eq!(traffic["escalated"], 1);
    assert_eq!(traffic["completion_rate"], 0.5);
    assert!(traffic["time_to_value_p50_ms"].as_f64().unwrap() >= 0.0);
    let buckets = traffic["buckets"].as_array().unwrap();
    let answered: u64 = buckets
        .iter()
        .filter_map(|b| b["answered"]["human"].as_u64())
        .sum();
    assert_eq!(answered, 1, "{traffic}");

    let (status, body) = host
        .send(admin("/admin/pipelines/desk/traffic?hours=0"))
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = host.send(admin("/admin/pipelines/nope/traffic")).await;
    assert_eq!(status, 404, "{body}");
    host.shutdown().await;
}
