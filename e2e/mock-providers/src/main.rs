//! `mock-providers`: mock OpenAI, Groq, Together, Anthropic and Ollama servers on one port.

use clap::Parser;
use mock_providers::{Mock, DEFAULT_OLLAMA_MODELS};

/// Mock LLM providers speaking the real wire formats, with fault injection (see the crate docs).
#[derive(Parser)]
#[command(name = "mock-providers", version)]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:9100")]
    listen: std::net::SocketAddr,
    /// Models the mock Ollama lists (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = DEFAULT_OLLAMA_MODELS.map(String::from))]
    ollama_models: Vec<String>,
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let cli = Cli::parse();
    let listener = tokio::net::TcpListener::bind(cli.listen).await?;
    eprintln!(
        "mock providers listening on http://{}",
        listener.local_addr()?
    );
    mock_providers::serve(listener, Mock::new(cli.ollama_models)).await
}
