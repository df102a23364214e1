//! A `wasi:http/incoming-handler` component (the `wasi` crate's proxy
//! world, as any `wasmtime serve` or Spin app is built): it answers every
//! request 200 with the request's own body. The benchmark runs it under
//! `wasmtime serve` as the one-component baseline Strata's stages are
//! compared with.

// The export exists only in the WebAssembly build; natively (clippy over the
// workspace) the crate is empty.
#[cfg(target_family = "wasm")]
mod component {
    use wasi::http::types::{
        Fields, IncomingBody, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
    };

    wasi::http::proxy::export!(Echo);

    struct Echo;

    impl wasi::exports::http::incoming_handler::Guest for Echo {
        fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
            let body = read_body(request);
            let response = OutgoingResponse::new(Fields::new());
            let outgoing = response.body().expect("a new response has a body");
            ResponseOutparam::set(response_out, Ok(response));
            let stream = outgoing.write().expect("a new body has a stream");
            // `blocking_write_and_flush` takes at most 4096 bytes at a time.
            for chunk in body.chunks(4096) {
                stream
                    .blocking_write_and_flush(chunk)
                    .expect("the client is reading");
            }
            drop(stream);
            OutgoingBody::finish(outgoing, None).expect("the body ends");
        }
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
