//! Traces over OTLP/HTTP: a local receiver gets one trace per request, a
//! `strata.request` span and one child span per stage, with the stage,
//! layer, digest and result as attributes.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use strata_tests::{SMALL_RUNTIME, TestHost, components, toml_str};

/// An OTLP/HTTP receiver on loopback keeping every JSON body it is sent.
fn receiver() -> (u16, Arc<Mutex<Vec<Value>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let bodies = Arc::new(Mutex::new(Vec::new()));
    let kept = bodies.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut seen = Vec::new();
            let mut buffer = [0u8; 16 * 1024];
            let (head, length) = loop {
                match stream.read(&mut buffer) {
                    Ok(0) | Err(_) => break (None, 0),
                    Ok(n) => seen.extend_from_slice(&buffer[..n]),
                }
                if let Some(end) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&seen[..end]).to_lowercase();
                    let length = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .unwrap_or(0);
                    break (Some(end + 4), length);
                }
            };
            let Some(start) = head else { continue };
            while seen.len() < start + length {
                match stream.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => seen.extend_from_slice(&buffer[..n]),
                }
            }
            if let Ok(body) = serde_json::from_slice::<Value>(&seen[start..]) {
                kept.lock().unwrap().push(body);
            }
            let _ = stream.write_all(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{}",
            );
        }
    });
    (port, bodies)
}

/// Every span received, flattened.
fn spans(bodies: &Mutex<Vec<Value>>) -> Vec<Value> {
    let bodies = bodies.lock().unwrap();
    bodies
        .iter()
        .flat_map(|body| {
            body["resourceSpans"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .flat_map(|rs| rs["scopeSpans"].as_array().cloned().unwrap_or_default())
        .flat_map(|ss| ss["spans"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// A span attribute's value as text, whatever its OTLP type.
fn attribute(span: &Value, key: &str) -> Option<String> {
    span["attributes"]
        .as_array()?
        .iter()
        .find(|a| a["key"] == key)
        .map(|a| {
            let value = &a["value"];
            value["stringValue"]
                .as_str()
                .map(str::to_owned)
                .unwrap_or_else(|| {
                    value
                        .as_object()
                        .and_then(|o| o.values().next())
                        .map_or(String::new(), |v| {
                            v.to_string().trim_matches('"').to_owned()
                        })
                })
        })
}

#[tokio::test]
async fn each_request_is_a_trace_with_a_span_per_stage() {
    let (port, bodies) = receiver();
    let manifest = format!(
        "{SMALL_RUNTIME}
[telemetry]
otlp = \"http://127.0.0.1:{port}\"
protocol = \"http/json\"
export_delay_ms = 100

[pipelines.p]
[[pipelines.p.stages]]
name = \"first\"
layer = \"rules\"
plugin = {scripted}
grants = [\"config\", \"log\"]
config = {{ outcome = \"next\", append = \" +1\" }}

[[pipelines.p.stages]]
name = \"second\"
layer = \"cache\"
plugin = {scripted}
grants = [\"config\", \"log\"]
config = {{ outcome = \"next\", append = \" +2\" }}

[[pipelines.p.stages]]
name = \"third\"
layer = \"generation\"
plugin = {scripted}
grants = [\"config\", \"log\"]
config = {{ outcome = \"respond\", answer = \"done\", confidence = 1.0 }}
",
        scripted = toml_str(components::SCRIPTED),
    );
    let host = TestHost::start(&manifest).await;
    let (status, first) = host.ask("p", "one").await;
    assert_eq!(status, 200, "{first}");
    let (status, _) = host.ask("p", "two").await;
    assert_eq!(status, 200);

    let deadline = Instant::now() + Duration::from_secs(20);
    while spans(&bodies).len() < 8 {
        assert!(
            Instant::now() < deadline,
            "the receiver got {} spans: {:?}",
            spans(&bodies).len(),
            bodies.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let spans = spans(&bodies);
    let id = first["request_id"].as_str().unwrap();
    let root = spans
        .iter()
        .find(|s| {
            s["name"] == "strata.request"
                && attribute(s, "strata.request_id").as_deref() == Some(id)
        })
        .unwrap_or_else(|| panic!("no request span for {id} in {spans:?}"));
    assert_eq!(attribute(root, "strata.pipeline").as_deref(), Some("p"));
    assert_eq!(
        attribute(root, "strata.status").as_deref(),
        Some("answered")
    );
    assert_eq!(
        attribute(root, "strata.layer").as_deref(),
        Some("generation")
    );
    let children: Vec<&Value> = spans
        .iter()
        .filter(|s| s["parentSpanId"] == root["spanId"] && s["traceId"] == root["traceId"])
        .collect();
    let names: Vec<&str> = children
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 3, "{children:?}");
    for (stage, layer, result) in [
        ("first", "rules", "next"),
        ("second", "cache", "next"),
        ("third", "generation", "respond"),
    ] {
        let span = children
            .iter()
            .find(|s| s["name"] == format!("stage {stage}"))
            .unwrap_or_else(|| panic!("no span for stage {stage}: {names:?}"));
        assert_eq!(attribute(span, "strata.layer").as_deref(), Some(layer));
        assert_eq!(attribute(span, "strata.result").as_deref(), Some(result));
        assert!(
            attribute(span, "strata.digest").is_some_and(|d| d.starts_with("sha256:")),
            "{span}"
        );
    }
    host.shutdown().await;
}
