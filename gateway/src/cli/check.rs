//! `llm-gateway check-config`: validate, build, print what the configuration enables.

use std::path::PathBuf;
use std::process::ExitCode;

use llm_gateway::live::{self, Source};
use llm_gateway::providers::learned::Learned;

/// Validates the file (or the environment), prints providers and virtual models; exit 0 if
/// valid, 2 if not.
pub async fn run(config: Option<PathBuf>) -> ExitCode {
    let (doc, settings) = match super::serve::load(config.as_ref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let hash = live::hash(&doc, &settings);
    let cfg = match live::build(
        &doc,
        settings,
        hash,
        Source::Start,
        &Learned::default(),
        None,
    )
    .await
    {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::from(2);
        }
    };
    println!("configuration is valid (hash {})", &cfg.meta.hash[..16]);
    for p in cfg.registry.providers() {
        let n = cfg
            .registry
            .entries()
            .iter()
            .filter(|e| e.provider.name == p.name)
            .count();
        println!(
            "provider {} ({:?}) at {}: {n} models",
            p.name, p.protocol, p.base_url
        );
    }
    for (v, pool) in cfg.router.virtuals() {
        println!(
            "virtual model {} -> strategy {}, {pool} candidates, local preference {}",
            v.name,
            llm_gateway::router::strategy_name(v.strategy),
            v.local_preference
                .map_or("off".to_owned(), |p| p.to_string())
        );
    }
    ExitCode::SUCCESS
}
