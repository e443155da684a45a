//! Fuzzing by property: the request parser and the Anthropic stream translator take any
//! input — random bytes, random JSON, random event sequences with valid ones mixed in — and
//! never panic; whatever the translator emits is valid OpenAI chunk JSON. The number of cases
//! is bounded (`PROPTEST_CASES`, 256 by default; test-all.sh runs more), so the run is too.

use llm_gateway::api::body;
use llm_gateway::providers::anthropic::{request, response::StreamTranslator};
use llm_gateway::providers::StreamItem;
use llm_gateway::wire::ChatRequest;
use proptest::prelude::*;
use serde_json::{json, Value};

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        "[a-z_]{0,12}".prop_map(Value::String),
        ".{0,40}".prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,14}", inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Chat-shaped requests: the real field names with random values, so the typed parser is
/// exercised deep inside, not only at the first wrong type.
fn chat_like() -> impl Strategy<Value = Value> {
    let role = prop_oneof![
        Just("user"),
        Just("assistant"),
        Just("system"),
        Just("developer"),
        Just("tool"),
        Just("function"),
        Just("wizard")
    ];
    let part = prop_oneof![
        ".{0,30}".prop_map(|t| json!({"type": "text", "text": t})),
        ".{0,30}".prop_map(|u| json!({"type": "image_url", "image_url": {"url": u}})),
        json_value(),
    ];
    let content = prop_oneof![
        ".{0,50}".prop_map(Value::String),
        prop::collection::vec(part, 0..4).prop_map(Value::Array),
        json_value(),
    ];
    let message = (role, content, proptest::option::of(json_value())).prop_map(|(r, c, extra)| {
        let mut m = json!({"role": r, "content": c});
        if let Some(x) = extra {
            m["tool_calls"] = x;
        }
        m
    });
    (
        prop::collection::vec(message, 0..5),
        proptest::option::of(json_value()),
        proptest::option::of(any::<u32>()),
        proptest::option::of(any::<u32>()),
        proptest::option::of(json_value()),
        any::<bool>(),
    )
        .prop_map(|(messages, tools, max_tokens, n, rf, stream)| {
            let mut b =
                json!({"model": "claude-3-5-haiku-latest", "messages": messages, "stream": stream});
            if let Some(t) = tools {
                b["tools"] = t;
            }
            if let Some(m) = max_tokens {
                b["max_tokens"] = json!(m);
            }
            if let Some(n) = n {
                b["n"] = json!(n);
            }
            if let Some(rf) = rf {
                b["response_format"] = rf;
            }
            b
        })
}

fn exercise(bytes: &[u8]) {
    if let Ok((raw, req)) = body::parse::<ChatRequest>(bytes) {
        let _ = llm_gateway::api::chat::validate(&req);
        let _ = llm_gateway::router::tokens::upper_bound(&req, raw.get("tools"));
        let _ = request::translate(&req, &raw, "claude-3-5-haiku-latest", 4096);
    }
}

/// Anthropic stream events: the real types with random fields, plus junk.
fn event() -> impl Strategy<Value = String> {
    let kind = prop_oneof![
        prop::sample::select(vec![
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
            "ping",
            "error",
        ])
        .prop_map(String::from),
        "[a-z_]{1,10}",
    ];
    prop_oneof![
        (kind, json_value(), json_value(), any::<u8>()).prop_map(|(k, a, b, i)| {
            json!({"type": k, "index": i, "message": a, "content_block": b.clone(),
                   "delta": b, "usage": {"output_tokens": i}, "error": {"type": "x", "message": "y"}})
            .to_string()
        }),
        Just(r#"{"type":"message_start","message":{"id":"m","model":"c","usage":{"input_tokens":3}}}"#.to_owned()),
        Just(r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#.to_owned()),
        ".{0,20}".prop_map(|t| json!({"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":t}}).to_string()),
        Just(r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"t","name":"f","input":{}}}"#.to_owned()),
        ".{0,20}".prop_map(|t| json!({"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":t}}).to_string()),
        Just(r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":5}}"#.to_owned()),
        ".{0,60}",
    ]
}

proptest! {
    #[test]
    fn the_parser_takes_any_bytes(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        exercise(&bytes);
    }

    #[test]
    fn the_parser_takes_any_json(v in json_value()) {
        exercise(v.to_string().as_bytes());
    }

    #[test]
    fn the_parser_takes_any_chat_shaped_request(v in chat_like()) {
        exercise(v.to_string().as_bytes());
    }

    #[test]
    fn the_stream_translator_takes_any_events(
        events in prop::collection::vec(event(), 0..24),
        json_tool in proptest::option::of(Just("answer".to_owned())),
    ) {
        let mut t = StreamTranslator::new(json_tool);
        for e in &events {
            for item in t.on_event(e) {
                if let StreamItem::Chunk { data, .. } = item {
                    let v: Value = serde_json::from_slice(&data).expect("chunks are JSON");
                    prop_assert_eq!(&v["object"], "chat.completion.chunk");
                }
            }
        }
    }
}
