//! `local-llm [ADDR] [--latency-ms N] [--api-key KEY]`: serve the local
//! stand-in provider (see the library) until interrupted.

use std::time::Duration;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut listen = "127.0.0.1:8000".to_owned();
    let mut options = local_llm::Options::default();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--latency-ms" => {
                let ms: u64 = args.next().unwrap_or_default().parse()?;
                options.latency = Duration::from_millis(ms);
            }
            "--api-key" => options.api_key = args.next(),
            "--help" | "-h" => {
                println!("usage: local-llm [ADDR] [--latency-ms N] [--api-key KEY]");
                return Ok(());
            }
            other => listen = other.to_owned(),
        }
    }
    let listener = tokio::net::TcpListener::bind(&listen).await?;
    let server = local_llm::LocalLlm::serve(listener, options)?;
    // The demo and benchmark scripts read the address from this line.
    println!("listening on {}", server.addr());
    tokio::signal::ctrl_c().await?;
    Ok(())
}
