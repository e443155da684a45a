//! `llm-gateway cache-eval`: the semantic cache's true- and false-hit rates on labelled
//! prompt pairs, per source and across thresholds, through the cache the configuration
//! builds (its embedding model or `cache.embedding_provider`, its threshold, the guard and
//! the verifier).

use std::path::PathBuf;
use std::process::ExitCode;

use llm_gateway::cache::{eval, Cache};
use llm_gateway::live::{self, Source};
use llm_gateway::providers::learned::Learned;

/// Thresholds the report sweeps.
const THRESHOLDS: [f32; 8] = [0.75, 0.80, 0.85, 0.88, 0.90, 0.93, 0.95, 0.97];

/// Evaluates every `pairs` file; writes the pairs' verifier features to `features_out`.
pub async fn run(
    config: Option<PathBuf>,
    pairs: Vec<PathBuf>,
    features_out: Option<PathBuf>,
) -> ExitCode {
    let fail = |e: String| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    };
    let (doc, mut settings) = match super::serve::load(config.as_ref()) {
        Ok(s) => s,
        Err(e) => return fail(e.to_string()),
    };
    let mut all = Vec::new();
    for p in &pairs {
        match eval::load(p) {
            Ok(v) => all.extend(v),
            Err(e) => return fail(e),
        }
    }
    let default = settings.cache.threshold;
    settings.cache.enabled = true;
    settings.cache.semantic = true;
    // Hits are recorded with their similarity, so one run at the lowest threshold answers
    // every higher one.
    settings.cache.threshold = THRESHOLDS[0].min(default);
    settings.cache.max_entries = all.len() * 2 + 16;
    let mut cache = match Cache::from_settings(&settings.cache, None).await {
        Ok(Some(c)) => c,
        Ok(None) => return fail("the cache is off".into()),
        Err(e) => return fail(e),
    };
    if settings.cache.embedding_provider.is_some() {
        let hash = live::hash(&doc, &settings);
        let learned = Learned::default();
        match live::build(&doc, settings, hash, Source::Start, &learned, None).await {
            Ok(cfg) => {
                if let Err(e) = cache.attach_provider(&cfg.registry) {
                    return fail(e);
                }
            }
            Err(e) => return fail(format!("{e:#}")),
        }
    }
    if !cache.is_semantic() {
        return fail("no embedding model: set LLM_GATEWAY_EMBEDDING_MODEL, cache.embedding_model or cache.embedding_provider".into());
    }
    eprintln!("evaluating {} pairs …", all.len());
    let outcomes = eval::run(&cache, &all).await;
    if outcomes.len() < all.len() {
        eprintln!(
            "warning: {} pairs could not be embedded and are left out",
            all.len() - outcomes.len()
        );
    }
    if let Some(path) = features_out {
        if let Err(e) = std::fs::write(&path, eval::features_csv(&all, &outcomes)) {
            return fail(format!("{}: {e}", path.display()));
        }
    }
    let mut thresholds = THRESHOLDS.to_vec();
    if !thresholds.contains(&default) {
        thresholds.push(default);
        thresholds.sort_by(f32::total_cmp);
    }
    print!(
        "{}",
        eval::report(cache.verifier(), &all, &outcomes, default, &thresholds)
    );
    ExitCode::SUCCESS
}
