//! A `wasi:http/incoming-handler` component written as an HTTP stage (the
//! `wasi` crate's proxy world, nothing from Strata): it reads the JSON body
//! the host sends and answers by the input, so the tests can see each row
//! of the response-to-outcome mapping.
//!
//! | input | response |
//! | --- | --- |
//! | `hello` | 200 `{"output": "hello from STAGE", "confidence": 0.75}` (STAGE from the `strata-stage` header) |
//! | `pass` | 200 `{"next": {"input": "passed: pass", "attributes": {"seen_by": STAGE}}}` |
//! | `human` | 202 `{"reason": "asks for a person", "draft": "a draft"}` |
//! | `bad` | 422 `{"code": "bad_input", "message": "no thanks"}` |
//! | `boom` | 500 `internal` |
//! | `panic` | a trap |
//! | `garbage` | 200 `not json` |
//! | `big` | 200 with a 300 KiB answer |
//! | `echo` | 200, answering with the method, path and body it received |
//! | anything else | 204 |

// The export exists only in the WebAssembly build; natively (clippy over the
// workspace) the crate is empty.
#[cfg(target_family = "wasm")]
mod component {
    use wasi::http::types::{
        Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingResponse,
        ResponseOutparam,
    };

    wasi::http::proxy::export!(Stage);

    struct Stage;

    impl wasi::exports::http::incoming_handler::Guest for Stage {
        fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
            let stage = request
                .headers()
                .get("strata-stage")
                .first()
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            let method = match request.method() {
                Method::Post => "POST".to_owned(),
                other => format!("{other:?}"),
            };
            let path = request.path_with_query().unwrap_or_default();
            let body = read_body(request);
            let input = input_of(&body);
            let (status, text) = match input.as_str() {
                "hello" => (
                    200,
                    format!(r#"{{"output": "hello from {stage}", "confidence": 0.75}}"#),
                ),
                "pass" => (
                    200,
                    format!(
                        r#"{{"next": {{"input": "passed: pass", "attributes": {{"seen_by": "{stage}"}}}}}}"#
                    ),
                ),
                "human" => (
                    202,
                    r#"{"reason": "asks for a person", "draft": "a draft"}"#.to_owned(),
                ),
                "bad" => (
                    422,
                    r#"{"code": "bad_input", "message": "no thanks"}"#.to_owned(),
                ),
                "boom" => (500, "internal".to_owned()),
                "panic" => panic!("the stage was asked to panic"),
                "garbage" => (200, "not json".to_owned()),
                "big" => (
                    200,
                    format!(r#"{{"output": "{}"}}"#, "x".repeat(300 * 1024)),
                ),
                "echo" => {
                    let seen = format!("{method} {path} {}", String::from_utf8_lossy(&body));
                    (200, format!(r#"{{"output": {}}}"#, quote(&seen)))
                }
                _ => (204, String::new()),
            };
            respond(response_out, status, text.as_bytes());
        }
    }

    /// The `input` of the host's JSON body (enough of a reader for the
    /// test: the value is a plain string).
    fn input_of(body: &[u8]) -> String {
        let text = String::from_utf8_lossy(body);
        let Some(start) = text.find(r#""input":""#) else {
            return String::new();
        };
        let rest = &text[start + r#""input":""#.len()..];
        rest.split('"').next().unwrap_or_default().to_owned()
    }

    /// `text` as a JSON string.
    fn quote(text: &str) -> String {
        let mut out = String::from("\"");
        for c in text.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
                c => out.push(c),
            }
        }
        out.push('"');
        out
    }

    fn respond(out: ResponseOutparam, status: u16, body: &[u8]) {
        let response = OutgoingResponse::new(Fields::new());
        response
            .set_status_code(status)
            .expect("a valid status code");
        let outgoing = response.body().expect("a new response has a body");
        ResponseOutparam::set(out, Ok(response));
        let stream = outgoing.write().expect("a new body has a stream");
        // `blocking_write_and_flush` takes at most 4096 bytes at a time.
        for chunk in body.chunks(4096) {
            if stream.blocking_write_and_flush(chunk).is_err() {
                // The host stopped reading (the answer was too long).
                break;
            }
        }
        drop(stream);
        let _ = OutgoingBody::finish(outgoing, None);
    }

    /// The whole request body.
    fn read_body(request: IncomingRequest) -> Vec<u8> {
        let mut body = Vec::new();
        let Ok(incoming) = request.consume() else {
            return body;
        };
        if let Ok(stream) = incoming.stream() {
            while let Ok(chunk) = stream.blocking_read(64 * 1024) {
                body.extend_from_slice(&chunk);
            }
        }
        IncomingBody::finish(incoming);
        body
    }
}
