//! The `llm-gateway` binary: everything it does is in [`cli`].

mod cli;

#[global_allocator]
static ALLOCATOR: llm_gateway::alloc::Allocator = llm_gateway::alloc::Allocator;

fn main() -> std::process::ExitCode {
    cli::run()
}
