//! Prompt size for context-window checks: a free upper bound first (a token is at least one
//! byte), and the exact count with a real tokenizer (`o200k_base`, via tiktoken-rs) only when
//! the bound does not already fit every candidate. Other vendors' tokenizers differ by a few
//! percent; the count is an estimate for them.

use std::sync::LazyLock;

use tiktoken_rs::CoreBPE;

use crate::wire::ChatRequest;

/// Tokens OpenAI adds per message for role and separators.
const PER_MESSAGE: usize = 4;

static BPE: LazyLock<CoreBPE> =
    LazyLock::new(|| tiktoken_rs::o200k_base().expect("the embedded o200k_base vocabulary loads"));

/// Loads the tokenizer now (about 0.2 s and 40 MB) instead of on the first long prompt.
pub fn warm_up() {
    LazyLock::force(&BPE);
}

/// Message texts, borrowed where they are plain strings (the bound below runs on every
/// routed request and must not copy the conversation).
fn texts(req: &ChatRequest) -> impl Iterator<Item = std::borrow::Cow<'_, str>> + '_ {
    req.messages
        .iter()
        .filter_map(|m| m.content().map(|c| c.text_cow()))
}

fn tools_json(req: &ChatRequest, raw_tools: Option<&serde_json::Value>) -> String {
    match (req.has_tools(), raw_tools) {
        (true, Some(t)) => t.to_string(),
        _ => String::new(),
    }
}

/// Counts bytes written, to size the tools' JSON without building it.
struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An upper bound of the prompt's tokens, without tokenizing.
pub fn upper_bound(req: &ChatRequest, raw_tools: Option<&serde_json::Value>) -> usize {
    *req.sizes.bound.get_or_init(|| {
        let mut tools = ByteCount(0);
        if let (true, Some(t)) = (req.has_tools(), raw_tools) {
            let _ = serde_json::to_writer(&mut tools, t);
        }
        texts(req).map(|t| t.len() + PER_MESSAGE).sum::<usize>() + tools.0
    })
}

/// The prompt's tokens, counted.
pub fn count(req: &ChatRequest, raw_tools: Option<&serde_json::Value>) -> usize {
    *req.sizes.counted.get_or_init(|| {
        let bpe = &*BPE;
        texts(req)
            .map(|t| bpe.encode_ordinary(&t).len() + PER_MESSAGE)
            .sum::<usize>()
            + bpe.encode_ordinary(&tools_json(req, raw_tools)).len()
    })
}

/// Tokens of an embeddings `input` (a string, strings, or token arrays), and its size in
/// bytes.
pub fn count_input(input: &serde_json::Value) -> (usize, usize) {
    use serde_json::Value;
    let bpe = &*BPE;
    let one = |v: &Value| match v {
        Value::String(s) => (bpe.encode_ordinary(s).len(), s.len()),
        Value::Array(ids) => (ids.len(), ids.len() * 4),
        Value::Number(_) => (1, 4),
        _ => (0, 0),
    };
    match input {
        Value::Array(items) if items.iter().any(|i| !i.is_number()) => items
            .iter()
            .map(one)
            .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1)),
        other => one(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn count_is_real_tokens_and_below_the_bound() {
        let req: ChatRequest = serde_json::from_value(serde_json::json!({
            "model": "x", "messages": [{"role": "user", "content": "Hello world, how are you doing today?"}]
        }))
        .unwrap();
        let n = count(&req, None);
        assert_eq!(
            n,
            9 + PER_MESSAGE,
            "o200k_base splits the sentence into 9 tokens"
        );
        assert!(upper_bound(&req, None) >= n);
    }
}
