//! A `wasi:http/incoming-handler` component that imports
//! `wasi:http/outgoing-handler`: its input is a URL (`http://host:port/path`),
//! which it fetches with a GET, answering 200 with
//! `{"output": "STATUS BODY"}`, or `{"output": "error: CODE"}` when the
//! request fails (a host not on its list is refused with
//! `HTTP-request-denied`). Without the `wasi:http` grant it must not load.

// The export exists only in the WebAssembly build; natively (clippy over the
// workspace) the crate is empty.
#[cfg(target_family = "wasm")]
mod component {
    use wasi::http::types::{
        Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingRequest,
        OutgoingResponse, ResponseOutparam, Scheme,
    };

    wasi::http::proxy::export!(Dialer);

    struct Dialer;

    impl wasi::exports::http::incoming_handler::Guest for Dialer {
        fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
            let body = read_body(request.consume().ok());
            let text = String::from_utf8_lossy(&body);
            let url = text
                .find(r#""input":""#)
                .map(|start| &text[start + r#""input":""#.len()..])
                .and_then(|rest| rest.split('"').next())
                .unwrap_or_default()
                .to_owned();
            let output = match fetch(&url) {
                Ok((status, body)) => format!("{status} {}", String::from_utf8_lossy(&body)),
                Err(error) => format!("error: {error}"),
            };
            let answer = format!(r#"{{"output": "{}"}}"#, output.replace('"', "'"));
            let response = OutgoingResponse::new(Fields::new());
            let outgoing = response.body().expect("a new response has a body");
            ResponseOutparam::set(response_out, Ok(response));
            let stream = outgoing.write().expect("a new body has a stream");
            for chunk in answer.as_bytes().chunks(4096) {
                let _ = stream.blocking_write_and_flush(chunk);
            }
            drop(stream);
            let _ = OutgoingBody::finish(outgoing, None);
        }
    }

    fn fetch(url: &str) -> Result<(u16, Vec<u8>), String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("not an http:// URL: {url}"))?;
        let (authority, path) = match rest.find('/') {
            Some(slash) => (&rest[..slash], &rest[slash..]),
            None => (rest, "/"),
        };
        let request = OutgoingRequest::new(Fields::new());
        request.set_method(&Method::Get).map_err(|()| "method")?;
        request
            .set_scheme(Some(&Scheme::Http))
            .map_err(|()| "scheme")?;
        request
            .set_authority(Some(authority))
            .map_err(|()| "authority")?;
        request
            .set_path_with_query(Some(path))
            .map_err(|()| "path")?;
        let future =
            wasi::http::outgoing_handler::handle(request, None).map_err(|e| format!("{e:?}"))?;
        future.subscribe().block();
        let response = future
            .get()
            .ok_or("no response")?
            .map_err(|()| "the response was taken")?
            .map_err(|e| format!("{e:?}"))?;
        let status = response.status();
        let body = read_body(response.consume().ok());
        Ok((status, body))
    }

    /// A whole body.
    fn read_body(incoming: Option<IncomingBody>) -> Vec<u8> {
        let mut body = Vec::new();
        let Some(incoming) = incoming else {
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
