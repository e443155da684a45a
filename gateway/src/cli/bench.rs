//! `llm-gateway bench`: runs the standard tasks against the configured models through the
//! provider layer, stores the results in the gateway's database (where running gateways
//! pick them up for routing), prints the markdown report and writes it and the chart.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use llm_gateway::bench::{self, report, tasks};
use llm_gateway::live::{self, Source};
use llm_gateway::providers::learned::Learned;
use llm_gateway_crds::ModelKind;

use super::{open_store, DbArgs};

/// What to run, from the command line.
pub struct Options {
    /// YAML config (else the environment's providers).
    pub config: Option<PathBuf>,
    /// `provider/model` or bare names; empty: every enabled chat model.
    pub models: Vec<String>,
    /// Task ids; empty: all 14.
    pub tasks: Vec<String>,
    /// Pairs in flight at once.
    pub concurrency: usize,
    /// Folder for the report and the chart.
    pub out: PathBuf,
}

/// Runs the benchmark; exit 2 on bad input, 1 if results could not be stored or written.
pub async fn run(o: Options, db: DbArgs) -> ExitCode {
    let fail = |code: u8, e: String| {
        eprintln!("error: {e}");
        ExitCode::from(code)
    };
    let (doc, settings) = match super::serve::load(o.config.as_ref()) {
        Ok(s) => s,
        Err(e) => return fail(2, e.to_string()),
    };
    let hash = live::hash(&doc, &settings);
    let learned = Learned::default();
    let cfg = match live::build(&doc, settings, hash, Source::Start, &learned, None).await {
        Ok(c) => c,
        Err(e) => return fail(2, format!("{e:#}")),
    };
    let chat: Vec<_> = cfg
        .registry
        .entries()
        .iter()
        .filter(|e| e.info.kind == ModelKind::Chat)
        .cloned()
        .collect();
    let models = if o.models.is_empty() {
        chat
    } else {
        let mut picked = Vec::new();
        for name in &o.models {
            // The names requests use: qualified, bare, or an alias (`llama3.2` for Ollama's
            // `llama3.2:latest`).
            let found = cfg.registry.resolve(name).ok().and_then(|t| {
                chat.iter()
                    .find(|e| e.provider.name == t.provider.name && *e.info.name == *t.model)
            });
            match found {
                Some(e) => picked.push(e.clone()),
                None => {
                    let known: Vec<String> = chat.iter().map(|e| e.qualified_name()).collect();
                    return fail(
                        2,
                        format!(
                            "--models: `{name}` is not an enabled chat model (enabled: {})",
                            known.join(", ")
                        ),
                    );
                }
            }
        }
        picked
    };
    if models.is_empty() {
        return fail(
            2,
            "no enabled chat model: set a provider's API key or --config".into(),
        );
    }
    let all = tasks::all();
    let chosen: Vec<tasks::Task> = if o.tasks.is_empty() {
        all
    } else {
        let mut picked = Vec::new();
        for id in &o.tasks {
            match all.iter().find(|t| t.id == id) {
                Some(t) => picked.push(t.clone()),
                None => {
                    let ids: Vec<&str> = all.iter().map(|t| t.id).collect();
                    return fail(
                        2,
                        format!("--tasks: no task `{id}` (tasks: {})", ids.join(", ")),
                    );
                }
            }
        }
        picked
    };
    // Before any provider call is paid for: the report must have somewhere to go.
    if let Err(e) = std::fs::create_dir_all(&o.out) {
        return fail(
            2,
            format!(
                "--out {}: cannot write the report there: {e}",
                o.out.display()
            ),
        );
    }
    let store = match open_store(&db).await {
        Ok(s) => s,
        Err(code) => return code,
    };
    let now = time::OffsetDateTime::now_utc();
    let at_ms = (now.unix_timestamp_nanos() / 1_000_000) as i64;
    let run_id = uuid::Uuid::new_v4().simple().to_string()[..12].to_owned();
    let when = now
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    eprintln!(
        "bench {run_id}: {} model(s) × {} task(s), {} at a time",
        models.len(),
        chosen.len(),
        o.concurrency
    );
    let tty = std::io::stderr().is_terminal();
    let results = bench::run(&models, &chosen, &run_id, at_ms, o.concurrency, |p| {
        let r = p.result;
        let what = match &r.error {
            Some(e) => format!("error: {e}"),
            None => format!("{:.2}", r.score),
        };
        let width = 30;
        let filled = width * p.done / p.total.max(1);
        let line = format!(
            "[{}{}] {}/{} {}/{} {} {}",
            "#".repeat(filled),
            " ".repeat(width - filled),
            p.done,
            p.total,
            r.provider,
            r.model,
            r.task,
            what
        );
        let mut err = std::io::stderr().lock();
        // On a terminal one line redraws in place; in a log each result is its own line.
        let _ = if tty {
            write!(err, "\r\x1b[2K{line}")
        } else {
            writeln!(err, "{line}")
        };
    })
    .await;
    if tty {
        eprintln!();
    }
    // The report first: a run that cost money is not lost to a database error.
    let md = report::markdown(&run_id, &when, &results);
    print!("{md}");
    let md_path = o.out.join(format!("bench-{run_id}.md"));
    let png_path = o.out.join(format!("bench-{run_id}.png"));
    let written = std::fs::create_dir_all(&o.out)
        .and_then(|()| std::fs::write(&md_path, &md))
        .map_err(|e| format!("{}: {e}", md_path.display()))
        .and_then(|()| report::chart_png(&run_id, &results))
        .and_then(|png| {
            std::fs::write(&png_path, png).map_err(|e| format!("{}: {e}", png_path.display()))
        });
    if let Err(e) = store.insert_bench_results(&results).await {
        return fail(1, format!("storing the results: {e}"));
    }
    if let Err(e) = written {
        return fail(1, e);
    }
    eprintln!(
        "stored {} results in the {} database; report {}, chart {}",
        results.len(),
        store.kind(),
        md_path.display(),
        png_path.display()
    );
    ExitCode::SUCCESS
}
