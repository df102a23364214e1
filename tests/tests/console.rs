//! The web console in a real browser: headless Chromium (Debian's package)
//! driven over WebDriver by chromedriver and fantoccini. A reviewer signs
//! in, claims and resolves a ticket (and its identical twin), and the
//! client sees the answer; accepts a proposed correction; meets a ticket
//! someone else holds, a stale ticket and a session that is no longer
//! valid; an operator promotes a canary from the dashboard. Screenshots of
//! each page go to `target/console-screenshots/`.
//!
//! `scripts/test` installs `chromium` and `chromium-driver`; without them
//! this test fails and says so.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fantoccini::actions::{InputSource, KeyAction, KeyActions};
use fantoccini::cookies::Cookie;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use strata::auth::Tokens;
use strata_tests::{RedisServer, SMALL_RUNTIME, TestHost, components, toml_str, workspace_root};

const REVIEWER: &str = "reviewer-secret";
const ADMIN: &str = "admin-secret";

fn manifest() -> String {
    format!(
        "{SMALL_RUNTIME}
[reload]
watch = false

[pipelines.desk]
[[pipelines.desk.stages]]
name = \"triage\"
layer = \"rules\"
plugin = {scripted}
grants = [\"config\", \"log\"]
config = {{ outcome = \"escalate\", reason = \"needs a person\", draft = \"Open the app and look for it\" }}

[pipelines.p]
[[pipelines.p.stages]]
name = \"first\"
layer = \"rules\"
plugin = {one}
grants = [\"config\"]
[pipelines.p.stages.candidate]
plugin = {two}
mode = \"canary\"
percent = 30

[[pipelines.p.stages]]
name = \"second\"
layer = \"rules\"
plugin = {one}
grants = [\"config\"]
config = {{ respond = true }}
",
        scripted = toml_str(components::SCRIPTED),
        one = toml_str(components::VERSION_ONE),
        two = toml_str(components::VERSION_TWO),
    )
}

/// A program the test needs, or a failure that says how to get it.
fn program(names: &[&str]) -> PathBuf {
    for name in names {
        for dir in std::env::var("PATH").unwrap_or_default().split(':') {
            let path = Path::new(dir).join(name);
            if path.is_file() {
                return path;
            }
        }
    }
    panic!(
        "none of {names:?} is installed: the console test needs Debian's chromium and \
         chromium-driver packages (scripts/test installs them)"
    );
}

/// chromedriver on a free loopback port, killed when dropped.
struct Driver {
    child: Child,
    url: String,
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn driver() -> Driver {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(program(&["chromedriver"]))
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver starts");
    let url = format!("http://127.0.0.1:{port}");
    let driver = Driver { child, url };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(response) = reqwest::get(format!("{}/status", driver.url)).await
            && response.status().is_success()
        {
            return driver;
        }
        assert!(Instant::now() < deadline, "chromedriver did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn browser(driver: &Driver) -> Client {
    let chromium = program(&["chromium", "chromium-browser"]);
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".to_owned(),
        json!({
            "binary": chromium,
            "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                     "--disable-gpu", "--window-size=1280,800"],
        }),
    );
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(capabilities)
        .connect(&driver.url)
        .await
        .expect("a browser session")
}

fn shots() -> PathBuf {
    let dir = workspace_root().join("target").join("console-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

async fn shot(client: &Client, name: &str) {
    let png = client.screenshot().await.expect("a screenshot");
    std::fs::write(shots().join(format!("{name}.png")), png).unwrap();
}

/// Wait until the element at `css` exists and its text contains `needle`.
async fn wait_text(client: &Client, css: &str, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut last = String::new();
    loop {
        if let Ok(element) = client.find(Locator::Css(css)).await
            && let Ok(text) = element.text().await
        {
            if text.contains(needle) {
                return text;
            }
            last = text;
        }
        if Instant::now() > deadline {
            shot(client, "failure").await;
            panic!("{css} never said \"{needle}\"; last: \"{last}\"");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Click the element at `css`, once it exists. The page redraws its lists
/// as data arrives, so an element found just before a redraw is found again.
async fn click(client: &Client, css: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let element = client
            .wait()
            .at_most(Duration::from_secs(15))
            .for_element(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no {css}: {e}"));
        match element.click().await {
            Ok(()) => return,
            Err(e) if e.to_string().contains("stale") && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("cannot click {css}: {e}"),
        }
    }
}

async fn key(client: &Client, key: char) {
    let keys = KeyActions::new("keyboard".to_owned())
        .then(KeyAction::Down { value: key })
        .then(KeyAction::Up { value: key });
    client.perform_actions(keys).await.expect("keys are sent");
}

async fn sign_in(client: &Client, base: &str, token: &str) {
    client.goto(&format!("{base}/console")).await.unwrap();
    let field = client
        .wait()
        .at_most(Duration::from_secs(15))
        .for_element(Locator::Css("#token"))
        .await
        .expect("the sign-in page");
    field.clear().await.unwrap();
    field.send_keys(token).await.unwrap();
    click(client, "#sign-in").await;
}

/// Ask pipeline `desk` (which escalates everything); the request's id.
async fn escalate(host: &TestHost, question: &str) -> String {
    let (status, body) = host.ask("desk", question).await;
    assert_eq!(status, 202, "{body}");
    body["request_id"].as_str().unwrap().to_owned()
}

async fn ticket_of(host: &TestHost, request: &str) -> i64 {
    let (_, tickets) = host
        .send(
            host.request(reqwest::Method::GET, "/v1/tickets?state=pending")
                .bearer_auth(ADMIN),
        )
        .await;
    tickets["tickets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["request_id"] == request)
        .and_then(|t| t["id"].as_i64())
        .unwrap_or_else(|| panic!("no ticket for {request}: {tickets}"))
}

#[tokio::test]
async fn a_reviewer_and_an_operator_work_through_the_console() {
    // The host is one of two serving as one, so the dashboard shows the
    // cluster too.
    let redis = RedisServer::start();
    let dir = tempfile::tempdir().unwrap();
    let shared = format!(
        "[shared]\nredis = \"{}\"\ncluster = \"console\"\n",
        redis.url()
    );
    let host = TestHost::start_in(
        dir,
        &format!("{shared}{}", manifest()),
        Tokens::new(None, Some(REVIEWER.into()), Some(ADMIN.into())),
    )
    .await;
    let second_host = TestHost::start_file(host.manifest()).await;
    let pin = escalate(&host, "How do I reset my PIN?").await;
    let pin_again = escalate(&host, "how do I reset my PIN").await;
    let card = escalate(&host, "Where is my new card?").await;
    let (status, answered) = host.ask("p", "hi").await;
    assert_eq!(status, 200, "{answered}");
    let (status, proposal) = host
        .post(
            "/v1/feedback",
            json!({"request_id": answered["request_id"], "rating": "bad",
                   "correction": "Hello! How can I help?"}),
        )
        .await;
    assert_eq!(status, 202, "{proposal}");

    let driver = driver().await;
    let client = browser(&driver).await;
    let base = host.base().to_owned();

    // Sign-in: a wrong token is refused, plainly; the right one opens the
    // queue and leaves an HttpOnly, SameSite=Strict session cookie.
    client.goto(&format!("{base}/console")).await.unwrap();
    wait_text(&client, "h1", "Sign in").await;
    shot(&client, "login").await;
    sign_in(&client, &base, "not-a-token").await;
    wait_text(&client, "#notice", "not valid").await;
    sign_in(&client, &base, REVIEWER).await;
    wait_text(&client, "#tickets", "How do I reset my PIN?").await;
    let cookie = client.get_named_cookie("strata_session").await.unwrap();
    assert_eq!(cookie.http_only(), Some(true));
    assert_eq!(
        cookie.same_site().map(|s| s.to_string()).as_deref(),
        Some("Strict")
    );
    shot(&client, "queue").await;

    // Claim the PIN question with `c`, edit the draft, resolve it and its
    // identical twin at once.
    let first = ticket_of(&host, &pin).await;
    let twin = ticket_of(&host, &pin_again).await;
    click(&client, &format!("#ticket-{first}")).await;
    wait_text(&client, "#detail h2", &format!("#{first}")).await;
    key(&client, 'c').await;
    wait_text(&client, "#status-message", "is yours").await;
    wait_text(&client, &format!("#ticket-{first}"), "yours").await;
    let answer = client.find(Locator::Css("#answer")).await.unwrap();
    answer.clear().await.unwrap();
    answer
        .send_keys("Open the app, then Settings, then PIN")
        .await
        .unwrap();
    wait_text(&client, "#diff", "Settings").await;
    wait_text(&client, "label.together", &format!("#{twin}")).await;
    shot(&client, "resolving").await;
    click(&client, "#resolve").await;
    let said = wait_text(&client, "#status-message", "Resolved").await;
    assert!(said.contains(&format!("#{twin}")), "{said}");
    for request in [&pin, &pin_again] {
        let (_, state) = host.get(&format!("/v1/requests/{request}")).await;
        assert_eq!(state["status"], "answered", "{state}");
        assert_eq!(state["output"], "Open the app, then Settings, then PIN");
    }

    // The proposed correction: accept it.
    let correction = proposal["ticket"]["id"].as_i64().unwrap();
    click(&client, &format!("#ticket-{correction}")).await;
    wait_text(&client, "#detail h2", "proposed correction").await;
    click(&client, "#resolve").await;
    wait_text(&client, "#status-message", "Correction accepted").await;
    let (_, ticket) = host
        .send(
            host.request(reqwest::Method::GET, &format!("/v1/tickets/{correction}"))
                .bearer_auth(ADMIN),
        )
        .await;
    assert_eq!(ticket["state"], "resolved", "{ticket}");

    // A ticket another reviewer holds shows as theirs, with nothing to do.
    let other = ticket_of(&host, &card).await;
    let (status, body) = host
        .send(
            host.request(reqwest::Method::POST, &format!("/v1/tickets/{other}/claim"))
                .bearer_auth(ADMIN)
                .json(&json!({})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    click(&client, "#tab-claimed").await;
    click(&client, &format!("#ticket-{other}")).await;
    wait_text(&client, "#theirs", "Claimed by admin:").await;
    assert!(client.find(Locator::Css("#resolve")).await.is_err());
    shot(&client, "theirs").await;

    // A stale ticket: resolved elsewhere after the page showed it. The
    // console says so and changes nothing.
    let late = escalate(&host, "Can I change my address?").await;
    let stale = ticket_of(&host, &late).await;
    click(&client, "#tab-open").await;
    click(&client, &format!("#ticket-{stale}")).await;
    wait_text(&client, "#detail h2", &format!("#{stale}")).await;
    let (status, body) = host
        .send(
            host.request(
                reqwest::Method::POST,
                &format!("/v1/tickets/{stale}/resolve"),
            )
            .bearer_auth(ADMIN)
            .json(&json!({"answer": "Yes, in the app"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    click(&client, "#resolve").await;
    wait_text(&client, "#status-message", "already resolved").await;
    let (_, state) = host.get(&format!("/v1/requests/{late}")).await;
    assert_eq!(state["output"], "Yes, in the app", "changed once only");

    // A double click resolves once: the second click finds the button
    // disabled while the first is in flight, and no conflict is reported.
    let twice = escalate(&host, "Is there a fee for transfers?").await;
    let double = ticket_of(&host, &twice).await;
    client.refresh().await.unwrap();
    click(&client, &format!("#ticket-{double}")).await;
    wait_text(&client, "#detail h2", &format!("#{double}")).await;
    client
        .execute(
            "const b = document.getElementById('resolve'); b.click(); b.click();",
            Vec::new(),
        )
        .await
        .unwrap();
    let said = wait_text(&client, "#status-message", "Resolved").await;
    assert!(!said.contains("already"), "{said}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let message = client
        .find(Locator::Css("#status-message"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        message.starts_with("Resolved"),
        "a second resolve was sent: {message}"
    );

    // At phone width the queue still works.
    client.set_window_size(390, 844).await.unwrap();
    click(&client, "#tab-resolved").await;
    wait_text(&client, "#tickets", "reset my PIN").await;
    shot(&client, "queue-phone").await;
    client.set_window_size(1280, 800).await.unwrap();

    // A session the host no longer recognises sends the user to sign in,
    // saying why.
    client.delete_cookie("strata_session").await.unwrap();
    let mut forged =
        Cookie::parse("strata_session=6e6f7065.00; Path=/; SameSite=Strict".to_owned()).unwrap();
    forged.set_domain("127.0.0.1");
    client.add_cookie(forged).await.unwrap();
    client.goto(&format!("{base}/console/queue")).await.unwrap();
    wait_text(&client, "#notice", "expired").await;

    // The operator: the dashboard on the admin listener, a canary promoted
    // after confirming.
    let admin = host.admin_base().to_owned();
    sign_in(&client, &admin, ADMIN).await;
    wait_text(&client, "#stage-p-first", "canary").await;
    wait_text(&client, "#requests-desk", "").await;
    // Both hosts, this one marked; the page reloads its data every 30 s, so
    // the second host's first status may need one more load.
    let in_step = |table: &str| {
        // The first line is the header.
        table
            .lines()
            .skip(1)
            .filter(|row| row.contains(" in step"))
            .count()
    };
    let mut cluster = wait_text(&client, "#cluster", "(this host)").await;
    for _ in 0..20 {
        if in_step(&cluster) >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        client.refresh().await.unwrap();
        cluster = wait_text(&client, "#cluster", "(this host)").await;
    }
    assert_eq!(in_step(&cluster), 2, "{cluster}");
    wait_text(&client, "#cluster-summary", "Every live host is in step").await;
    shot(&client, "dashboard").await;
    click(&client, "#promote-p-first").await;
    client
        .accept_alert()
        .await
        .expect("a confirmation is asked");
    wait_text(&client, "#status-message", "Promoted").await;
    let (_, serving) = host
        .send(
            reqwest::Client::new()
                .get(format!("{admin}/admin/pipelines"))
                .bearer_auth(ADMIN),
        )
        .await;
    let first_stage = serving["pipelines"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "p")
        .map(|p| p["stages"][0].clone())
        .unwrap();
    assert_eq!(first_stage["candidate"], Value::Null, "{serving}");
    wait_text(&client, "#audit", "promote").await;
    shot(&client, "dashboard-promoted").await;

    client.close().await.unwrap();
    host.shutdown().await;
    second_host.shutdown().await;
}
