//! `llm-gateway bench`: a standard set of 14 tasks ([`tasks`]) run against chosen models
//! through the gateway's own provider layer (so it measures the latency a user's
//! infrastructure really adds), graded without judgement ([`grade`], code in [`sandbox`]),
//! stored with the usage figures ([`crate::store::bench`]), reported as a table and a chart
//! ([`report`]). Routing then reads each model's latest scores per complexity tier.

pub mod grade;
pub mod report;
pub mod sandbox;
pub mod tasks;

use std::sync::Arc;
use std::time::Instant;

use futures::StreamExt;
use serde_json::{json, Map, Value};

use crate::models::registry::Entry;
use crate::providers::{ChatCall, ChatResponse, StreamItem};
use crate::store::bench::BenchResult;
use crate::wire::{ChatRequest, Usage};
use sandbox::Sandbox;
use tasks::Task;

/// One finished (model, task) pair, for progress reports.
pub struct Progress<'a> {
    /// Pairs done so far.
    pub done: usize,
    /// Pairs in the run.
    pub total: usize,
    /// The pair's result.
    pub result: &'a BenchResult,
}

/// What a model answered, with its timings and usage.
struct Answer {
    text: String,
    latency_ms: i64,
    ttft_ms: Option<i64>,
    usage: Option<Usage>,
}

/// Runs every task against every model (`concurrency` pairs at a time), grading as answers
/// arrive; `progress` hears of each finished pair. Results come back by model, then task.
pub async fn run(
    models: &[Entry],
    tasks: &[Task],
    run_id: &str,
    at_ms: i64,
    concurrency: usize,
    mut progress: impl FnMut(Progress<'_>),
) -> Vec<BenchResult> {
    let sandbox = Arc::new(Sandbox::detect());
    let pairs: Vec<(usize, usize)> = (0..models.len())
        .flat_map(|m| (0..tasks.len()).map(move |t| (m, t)))
        .collect();
    let total = pairs.len();
    let mut done = Vec::with_capacity(total);
    let mut stream = futures::stream::iter(pairs)
        .map(|(m, t)| {
            let sandbox = sandbox.clone();
            async move {
                let r = one(&models[m], &tasks[t], &sandbox, run_id, at_ms).await;
                (m, t, r)
            }
        })
        .buffer_unordered(concurrency.max(1));
    while let Some((m, t, r)) = stream.next().await {
        done.push((m, t, r));
        progress(Progress {
            done: done.len(),
            total,
            result: &done[done.len() - 1].2,
        });
    }
    done.sort_by_key(|(m, t, _)| (*m, *t));
    done.into_iter().map(|(_, _, r)| r).collect()
}

async fn one(
    model: &Entry,
    task: &Task,
    sandbox: &Sandbox,
    run_id: &str,
    at_ms: i64,
) -> BenchResult {
    let mut r = BenchResult {
        run_id: run_id.to_owned(),
        at_ms,
        provider: model.provider.name.to_string(),
        model: model.info.name.clone(),
        task: task.id.to_owned(),
        category: task.category.as_str().to_owned(),
        tier: task.category.tier().as_str().to_owned(),
        score: 0.0,
        latency_ms: 0,
        ttft_ms: None,
        prompt_tokens: 0,
        completion_tokens: 0,
        cost_usd: None,
        error: None,
    };
    let answer = match ask(model, task).await {
        Ok(a) => a,
        Err(e) => {
            r.error = Some(e);
            return r;
        }
    };
    // Providers that report no usage get the same estimate the ledger makes (≈ 4 bytes a
    // token), so cost stays comparable.
    let usage = answer.usage.unwrap_or_else(|| Usage {
        prompt_tokens: task.prompt.len().div_ceil(4) as u64,
        completion_tokens: answer.text.len().div_ceil(4) as u64,
        ..Usage::default()
    });
    r.latency_ms = answer.latency_ms;
    r.ttft_ms = answer.ttft_ms;
    r.prompt_tokens = usage.prompt_tokens as i64;
    r.completion_tokens = usage.completion_tokens as i64;
    r.cost_usd = model.info.price.map(|p| p.cost(&usage));
    let g = grade::grade(&task.grader, &answer.text, sandbox).await;
    r.score = g.score;
    // Stored as an error, so that routing does not read a missing sandbox as a model's 0.
    r.error = g.ungraded;
    r
}

/// Sends the task as a streamed chat request through the provider layer, holding one of the
/// provider's concurrency slots as a routed request would.
async fn ask(model: &Entry, task: &Task) -> Result<Answer, String> {
    let raw: Map<String, Value> = match json!({
        "model": model.info.name,
        "messages": [{"role": "user", "content": task.prompt}],
        "max_tokens": task.max_tokens,
        "temperature": 0,
        "stream": true,
        "stream_options": {"include_usage": true},
    }) {
        Value::Object(m) => m,
        _ => unreachable!("a JSON object literal"),
    };
    let req: ChatRequest =
        serde_json::from_value(Value::Object(raw.clone())).map_err(|e| e.to_string())?;
    let p = &model.provider;
    let limit = p.total_timeout();
    let started = Instant::now();
    let _permit = p
        .acquire(limit, false)
        .await
        .map_err(|e| e.message.clone())?;
    let call = ChatCall {
        req: &req,
        raw: &raw,
        model: &model.info.name,
        info: Some(&model.info),
    };
    let deadline = tokio::time::Instant::from_std(started) + limit;
    let timed_out = || format!("no complete answer within {} s", limit.as_secs());
    let answer = tokio::time::timeout_at(deadline, p.chat(call))
        .await
        .map_err(|_| timed_out())?
        .map_err(|e| e.message.clone())?;
    let ms = |since: Instant| since.elapsed().as_millis() as i64;
    let mut rx = match answer {
        ChatResponse::Json { body, usage } => {
            let v: Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
            return Ok(Answer {
                text: v["choices"][0]["message"]["content"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                latency_ms: ms(started),
                ttft_ms: None,
                usage,
            });
        }
        ChatResponse::Stream(rx) => rx,
    };
    let (mut text, mut ttft_ms, mut usage) = (String::new(), None, None);
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Err(_) => return Err(timed_out()),
            Ok(None) => return Err("the stream ended without its end marker".into()),
            Ok(Some(StreamItem::Error(e))) => return Err(e.message.clone()),
            Ok(Some(StreamItem::End)) => break,
            Ok(Some(StreamItem::Chunk {
                data,
                usage: u,
                content,
                ..
            })) => {
                if content > 0 && ttft_ms.is_none() {
                    ttft_ms = Some(ms(started));
                }
                if let Ok(v) = serde_json::from_slice::<Value>(&data) {
                    if let Some(piece) = v["choices"][0]["delta"]["content"].as_str() {
                        text.push_str(piece);
                    }
                }
                usage = u.or(usage);
            }
        }
    }
    Ok(Answer {
        text,
        latency_ms: ms(started),
        ttft_ms,
        usage,
    })
}
