//! `llm-gateway bench` against the mock providers: two models scripted to answer some tasks
//! right and some wrong are graded as scripted, their results stored alike in SQLite and
//! PostgreSQL (only each model's latest run counting), and routing then ranks with the
//! measured quality, saying so in its explanation.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use llm_gateway::bench::{self, tasks};
use llm_gateway::store::bench::BenchResult;
use llm_gateway::store::Store;
use serde_json::{json, Value};

const RIGHT: &[(&str, &str)] = &[
    ("capital-australia", "Canberra"),
    ("symbol-gold", "Au"),
    ("author-origin-of-species", "Charles Darwin"),
    ("code-palindrome", "```python\ndef is_palindrome(s):\n    t = [c.lower() for c in s if c.isalnum()]\n    return t == t[::-1]\n```"),
    ("code-merge-intervals", "Here you go:\n```python\ndef merge_intervals(intervals):\n    out = []\n    for s, e in sorted(intervals):\n        if out and s <= out[-1][1]:\n            out[-1][1] = max(out[-1][1], e)\n        else:\n            out.append([s, e])\n    return out\n```"),
    ("code-roman", "```python\ndef roman_to_int(s):\n    v = {'I': 1, 'V': 5, 'X': 10, 'L': 50, 'C': 100, 'D': 500, 'M': 1000}\n    total = 0\n    for i, c in enumerate(s):\n        if i + 1 < len(s) and v[c] < v[s[i + 1]]:\n            total -= v[c]\n        else:\n            total += v[c]\n    return total\n```"),
    ("summary-product-launch", "Northwind Robotics will ship the Stacker 3 in March; it lifts 25 kg, twice the old load, and 4,000 units are expected in year one."),
    ("summary-meeting", "The launch is delayed to 17 June; Marco owns the payment fix and reports on Fridays; the marketing budget stays at 120,000 euros."),
    ("reasoning-apples", "Three bags give 18 apples for 12 dollars; 5 single apples cost 5.\n17"),
    ("reasoning-syllogism", "No. Poker players do not play go, so she cannot be in the chess club."),
    ("reasoning-sequence", "The differences grow by two: 8, 10, 12, 14.\n56"),
    ("if-three-bullets", "- Keep a regular bedtime.\n- Avoid screens before bed.\n- Keep your room cool."),
    ("if-json", "{\"name\": \"Ada\", \"age\": 36, \"languages\": [\"English\", \"French\"]}"),
    ("if-lowercase-sentence", "the blue ocean rolls gently under a quiet evening sky tonight."),
];

/// gpt-4o's answers: knowledge right, everything else wrong or partly right.
const MIXED: &[(&str, &str, f64)] = &[
    ("capital-australia", "canberra.", 1.0),
    ("symbol-gold", "Au", 1.0),
    ("author-origin-of-species", "Charles Robert Darwin", 1.0),
    (
        "code-palindrome",
        "```python\ndef is_palindrome(s) return\n```",
        0.0,
    ),
    (
        "code-merge-intervals",
        "```python\ndef merge_intervals(intervals):\n    return intervals\n```",
        0.2,
    ),
    ("code-roman", "I cannot help with that.", 0.0),
    (
        "summary-product-launch",
        "Northwind launches a robot in March.",
        0.4,
    ),
    ("summary-meeting", "Launch moved.", 0.2),
    ("reasoning-apples", "Four bags.\n16", 0.0),
    ("reasoning-syllogism", "Yes, probably.", 0.0),
    ("reasoning-sequence", "54", 0.0),
    ("if-three-bullets", "- Sleep.", 2.0 / 3.0),
    ("if-json", "{\"name\": \"Ada\"}", 0.0),
    ("if-lowercase-sentence", "The Blue ocean, wide.", 0.25),
];

async fn script(h: &common::Harness) {
    let all = tasks::all();
    let prompt = |id: &str| all.iter().find(|t| t.id == id).unwrap().prompt;
    let mut scripts = Vec::new();
    for (id, reply) in RIGHT {
        scripts.push(json!({"model": "gpt-4o-mini", "contains": prompt(id), "reply": reply}));
    }
    for (id, reply, _) in MIXED {
        scripts.push(json!({"model": "gpt-4o", "contains": prompt(id), "reply": reply}));
    }
    h.script_replies(&Value::Array(scripts)).await;
}

async fn run_bench(h: &common::Harness, run_id: &str, at_ms: i64) -> Vec<BenchResult> {
    let cfg = h.state.config();
    let models: Vec<_> = ["gpt-4o-mini", "gpt-4o"]
        .iter()
        .map(|m| {
            cfg.registry
                .entries()
                .iter()
                .find(|e| &*e.provider.name == "openai" && e.info.name == *m)
                .unwrap()
                .clone()
        })
        .collect();
    let mut seen = 0;
    let results = bench::run(&models, &tasks::all(), run_id, at_ms, 4, |p| {
        seen += 1;
        assert_eq!((p.done, p.total), (seen, 28));
    })
    .await;
    assert_eq!(seen, 28, "progress hears of every pair");
    results
}

#[tokio::test]
async fn tasks_are_graded_as_scripted_and_timed_and_priced() {
    let h = common::start().await;
    script(&h).await;
    let results = run_bench(&h, "run-a", 1_000).await;
    assert_eq!(results.len(), 28);
    let by: HashMap<(&str, &str), &BenchResult> = results
        .iter()
        .map(|r| ((r.model.as_str(), r.task.as_str()), r))
        .collect();
    for (id, _) in RIGHT {
        let r = by[&("gpt-4o-mini", *id)];
        assert_eq!(r.score, 1.0, "{id}: {r:?}");
    }
    for (id, _, want) in MIXED {
        let r = by[&("gpt-4o", *id)];
        assert!(
            (r.score - want).abs() < 1e-9,
            "{id}: got {}, want {want}",
            r.score
        );
    }
    for r in &results {
        assert!(r.error.is_none(), "{r:?}");
        assert!(
            r.ttft_ms.is_some() && r.latency_ms >= r.ttft_ms.unwrap(),
            "{r:?}"
        );
        assert!(r.prompt_tokens > 0 && r.completion_tokens > 0, "{r:?}");
        assert!(r.cost_usd.is_some_and(|c| c > 0.0), "{r:?}");
        assert_eq!(r.run_id, "run-a");
    }
    // The same tokens cost more on the pricier model.
    let cost = |m: &str| -> f64 {
        results
            .iter()
            .filter(|r| r.model == m && r.task == "symbol-gold")
            .map(|r| r.cost_usd.unwrap() / (r.prompt_tokens + r.completion_tokens) as f64)
            .sum()
    };
    assert!(cost("gpt-4o") > cost("gpt-4o-mini"));
    let md = bench::report::markdown("run-a", "now", &results);
    assert!(
        md.contains("| openai/gpt-4o-mini | **1.00** | 1.00 | 1.00 | 1.00 | 1.00 | 1.00 |"),
        "{md}"
    );
    assert!(md.contains("| code-roman | code | 1.00 | 0.00 |"), "{md}");
}

#[tokio::test]
async fn a_model_that_cannot_answer_is_recorded_with_the_reason() {
    let h = common::start().await;
    h.fault(json!({"vendor": "openai", "status": 500})).await;
    let results = run_bench(&h, "run-e", 1).await;
    assert!(results.iter().all(|r| r.error.is_some() && r.score == 0.0));
}

async fn stored_alike(store: &Store, results: &[BenchResult], older: &[BenchResult]) -> Value {
    store.insert_bench_results(older).await.unwrap();
    store.insert_bench_results(results).await.unwrap();
    let back = store.bench_results("run-a").await.unwrap();
    let mut sorted = results.to_vec();
    sorted.sort_by(|a, b| (&a.provider, &a.model, &a.task).cmp(&(&b.provider, &b.model, &b.task)));
    assert_eq!(back, sorted, "{} gives back what it stored", store.kind());
    serde_json::to_value(store.measured_quality().await.unwrap()).unwrap()
}

const BENCHED_ROUTE: &str = "  virtual_models:
    - name: benched
      strategy: quality
      candidates:
        models: [openai/gpt-4o, openai/gpt-4o-mini]
";

#[tokio::test]
async fn both_databases_store_runs_and_routing_uses_the_latest_measured_quality() {
    let h = common::gateway().routing(BENCHED_ROUTE).start().await;
    script(&h).await;
    let results = run_bench(&h, "run-a", 2_000).await;
    // An older run in which gpt-4o aced code, and a failed row: neither may count.
    let mut older = results.clone();
    for r in &mut older {
        r.run_id = "run-old".into();
        r.at_ms = 1_000;
        r.score = 1.0;
    }
    let mut with_error = results.clone();
    with_error.push(BenchResult {
        task: "unanswered".into(),
        model: "gpt-4o".into(),
        tier: "complex".into(),
        score: 0.0,
        error: Some("provider openai answered 500".into()),
        ..results[0].clone()
    });

    let dir = tempfile::tempdir().unwrap();
    let sqlite = Store::open(&format!("sqlite://{}/b.db", dir.path().display()))
        .await
        .unwrap();
    let (pg_url, schema) = common::pg_schema().await;
    let pg = Store::open(&pg_url).await.unwrap();
    // A later run of one knowledge task: it measures `simple` again and leaves the rest.
    let partial = vec![BenchResult {
        run_id: "run-partial".into(),
        at_ms: 3_000,
        score: 0.5,
        ..results
            .iter()
            .find(|r| r.model == "gpt-4o" && r.task == "symbol-gold")
            .unwrap()
            .clone()
    }];
    let a = stored_alike(&sqlite, &with_error, &older).await;
    let b = stored_alike(&pg, &with_error, &older).await;
    sqlite.insert_bench_results(&partial).await.unwrap();
    pg.insert_bench_results(&partial).await.unwrap();
    let a2 = serde_json::to_value(sqlite.measured_quality().await.unwrap()).unwrap();
    let b2 = serde_json::to_value(pg.measured_quality().await.unwrap()).unwrap();
    common::drop_schema(&schema).await;
    assert_eq!(a, b, "SQLite and PostgreSQL measure alike");
    assert_eq!(a2, b2, "and alike after a partial run");
    let tier_of = |v: &Value, model: &str, tier: &str| -> f64 {
        v.as_array()
            .unwrap()
            .iter()
            .find(|r| r["model"] == model && r["tier"] == tier)
            .unwrap()["quality"]
            .as_f64()
            .unwrap()
    };
    assert_eq!(
        tier_of(&a2, "gpt-4o", "simple"),
        0.5,
        "the partial run re-measured simple"
    );
    assert_eq!(
        tier_of(&a2, "gpt-4o", "complex"),
        tier_of(&a, "gpt-4o", "complex"),
        "and left complex as the full run measured it"
    );
    let q = |model: &str, tier: &str| -> f64 {
        a.as_array()
            .unwrap()
            .iter()
            .find(|r| r["model"] == model && r["tier"] == tier)
            .unwrap_or_else(|| panic!("{model} {tier} in {a}"))["quality"]
            .as_f64()
            .unwrap()
    };
    assert_eq!(q("gpt-4o", "simple"), 1.0);
    assert!(
        (q("gpt-4o", "complex") - 0.2 / 3.0).abs() < 1e-9,
        "the latest run, not the older"
    );
    let moderate = (0.4 + 0.2 + 2.0 / 3.0 + 0.0 + 0.25) / 5.0;
    assert!((q("gpt-4o", "moderate") - moderate).abs() < 1e-9);
    assert_eq!(q("gpt-4o-mini", "reasoning"), 1.0);

    // Before: priors. gpt-4o's prior is above gpt-4o-mini's.
    let ask = |model: &str| {
        json!({"model": model, "messages": [{"role": "user", "content":
            "Implement an LRU cache in Rust with unit tests."}]})
    };
    let ranking = |d: &Value| d["decision"]["ranking"].as_array().unwrap().clone();
    let (status, before) = h.route(&ask("benched")).await;
    assert_eq!(status, 200, "{before}");
    assert!(ranking(&before)
        .iter()
        .all(|r| r["quality_source"] == "prior"));
    assert_eq!(ranking(&before)[0]["model"], "openai/gpt-4o", "{before}");

    llm_gateway::app::refresh_measured_quality(
        h.state.clone(),
        sqlite.clone(),
        Duration::from_millis(50),
    );
    let mut after = Value::Null;
    for _ in 0..100 {
        after = h.route(&ask("benched")).await.1;
        if ranking(&after)[0]["model"] == "openai/gpt-4o-mini" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let tier = after["decision"]["tier"].as_str().unwrap().to_owned();
    let rank = ranking(&after);
    assert_eq!(rank[0]["model"], "openai/gpt-4o-mini", "{after}");
    assert_eq!(after["decision"]["measured_candidates"], 2);
    assert_eq!(rank[0]["quality_source"], "measured");
    assert_eq!(rank[0]["tier_quality"], 1.0);
    assert_eq!(rank[1]["model"], "openai/gpt-4o");
    assert_eq!(rank[1]["quality_source"], "measured");
    assert!(
        (rank[1]["tier_quality"].as_f64().unwrap() - tier_of(&a2, "gpt-4o", &tier)).abs() < 1e-9
    );

    // A route whose candidates are not all measured compares priors only: a measurement and a
    // catalog guess are not on one scale.
    let (_, all) = h.route(&ask("quality")).await;
    assert_eq!(all["decision"]["measured_candidates"], 2, "{all}");
    assert!(ranking(&all).iter().all(|r| r["quality_source"] == "prior"));
    let (_, fresh) = common::start().await.route(&ask("quality")).await;
    assert_eq!(
        ranking(&all)[0]["model"],
        ranking(&fresh)[0]["model"],
        "the same first choice as a gateway that never saw a measurement"
    );
}

#[tokio::test]
async fn answers_are_read_from_every_wire_format() {
    // Anthropic's and Ollama's streams are translated by the provider layer; the bench must
    // read the text out of each as it reads OpenAI's.
    let h = common::start().await;
    let task = tasks::all()
        .into_iter()
        .find(|t| t.id == "capital-australia")
        .unwrap();
    h.script_replies(&json!([{"model": "*", "contains": task.prompt, "reply": "Canberra"}]))
        .await;
    let cfg = h.state.config();
    let models: Vec<_> = [
        ("anthropic", "claude-3-5-haiku-latest"),
        ("ollama", "llama3.2:latest"),
        ("groq", "llama-3.1-8b-instant"),
        ("together", "meta-llama/Llama-3.3-70B-Instruct-Turbo"),
    ]
    .iter()
    .map(|(p, m)| {
        cfg.registry
            .entries()
            .iter()
            .find(|e| &*e.provider.name == *p && e.info.name == *m)
            .unwrap_or_else(|| panic!("{p}/{m} is enabled"))
            .clone()
    })
    .collect();
    let results = bench::run(&models, &[task], "run-w", 1, 4, |_| {}).await;
    for r in &results {
        assert_eq!((r.score, &r.error), (1.0, &None), "{r:?}");
        assert!(r.completion_tokens > 0 && r.ttft_ms.is_some(), "{r:?}");
    }
}
