//! Metrics cardinality: no label takes its value from a key, a prompt, a request id or any
//! other unbounded set, so a scrape's size does not grow with traffic.

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::{json, Value};

/// Every `(metric, label, value)` of an exposition.
fn label_values(text: &str) -> BTreeSet<(String, String, String)> {
    let mut out = BTreeSet::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, rest)) = line.split_once('{') else {
            continue;
        };
        let Some((labels, _)) = rest.rsplit_once('}') else {
            continue;
        };
        for pair in labels.split("\",").filter(|p| !p.is_empty()) {
            if let Some((k, v)) = pair.split_once("=\"") {
                out.insert((
                    name.to_owned(),
                    k.trim().to_owned(),
                    v.trim_end_matches('"').to_owned(),
                ));
            }
        }
    }
    out
}

fn series(text: &str) -> usize {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .count()
}

#[tokio::test]
async fn no_label_takes_a_value_from_a_key_a_prompt_or_an_unbounded_set() {
    let h = gateway()
        .keys(false, std::time::Duration::from_secs(5))
        .start()
        .await;
    let mut secrets = Vec::new();
    let round = |n: usize, tag: &'static str| {
        let h = &h;
        let mut made = Vec::new();
        async move {
            for i in 0..n {
                let key: Value = h
                    .admin(reqwest::Method::POST, "/admin/keys")
                    .json(&json!({"tenant": format!("tenant-{tag}-{i}"), "name": format!("k{i}")}))
                    .send()
                    .await
                    .unwrap()
                    .json()
                    .await
                    .unwrap();
                let key = key["key"].as_str().unwrap().to_owned();
                let prompt = format!("prompt-marker-{tag}-{i} what is {i} + {i}?");
                let unknown = format!("no-such-model-{tag}-{i}");
                for (model, stream) in [
                    ("gpt-4o-mini", false),
                    ("claude-3-5-haiku-latest", true),
                    (unknown.as_str(), false),
                    ("auto", false),
                ] {
                    let r = h
                        .http
                        .post(format!("{}/v1/chat/completions", h.gw))
                        .bearer_auth(&key)
                        .header("x-request-id", format!("rid-{tag}-{i}"))
                        .json(&json!({"model": model, "stream": stream,
                                      "messages": [{"role": "user", "content": prompt}]}))
                        .send()
                        .await
                        .unwrap();
                    let _ = r.text().await;
                }
                // A key the gateway does not know.
                let r = h
                    .http
                    .post(format!("{}/v1/chat/completions", h.gw))
                    .bearer_auth(format!("lgw-bogus-{tag}-{i}"))
                    .json(&json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "x"}]}))
                    .send()
                    .await
                    .unwrap();
                let _ = r.text().await;
                made.extend([
                    key,
                    prompt,
                    unknown,
                    format!("rid-{tag}-{i}"),
                    format!("tenant-{tag}-{i}"),
                ]);
            }
            made
        }
    };
    secrets.extend(round(10, "a").await);
    let first = h.get_text("/metrics").await;
    secrets.extend(round(10, "b").await);
    let second = h.get_text("/metrics").await;

    let values = label_values(&second);
    assert!(
        values.len() > 50,
        "the exposition was parsed: {}",
        values.len()
    );
    for (metric, label, value) in &values {
        for s in &secrets {
            assert!(
                !value.contains(s.as_str()),
                "{metric}{{{label}=\"{value}\"}} carries a request's value ({s})"
            );
        }
        for marker in ["prompt-marker", "no-such-model", "rid-", "tenant-", "lgw-"] {
            assert!(
                !value.contains(marker),
                "{metric}{{{label}=\"{value}\"}} carries a request's value"
            );
        }
    }
    // Ten more callers, prompts and unknown models added no series.
    assert_eq!(
        series(&first),
        series(&second),
        "the number of series grew with traffic"
    );
    // The new families are there.
    for family in [
        "llm_gateway_overhead_seconds_bucket",
        "llm_gateway_time_to_first_token_seconds_bucket",
    ] {
        assert!(second.contains(family), "{family} missing");
    }
}
