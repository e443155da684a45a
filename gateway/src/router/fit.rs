//! Whether a model can serve a request — the one definition the router (for every
//! candidate of a virtual model, and for an explicit name) and the chat handler (after a
//! budget downgrade) all use: the capabilities the request needs, and room in the context
//! window for the prompt and the answer.

use llm_gateway_crds::{ModelKind, Protocol};

use super::{tokens, Exclusion};
use crate::config::model::ModelInfo;
use crate::wire::ChatRequest;

/// Completion tokens a virtual model keeps room for when the request sets no `max_tokens`
/// (an explicitly named model is the client's own choice: only the prompt must fit).
pub const DEFAULT_OUTPUT_RESERVE: usize = 512;
/// Context window assumed for a model whose window is unknown, when ranking candidates.
pub const UNKNOWN_CONTEXT: u32 = 8192;

/// What a request needs of a model, read once per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Needs {
    /// Image input.
    pub vision: bool,
    /// Function calling.
    pub tools: bool,
    /// JSON output.
    pub json: bool,
    /// Something only the OpenAI protocol carries (`n > 1`, logprobs, audio or files).
    pub openai_only: Option<&'static str>,
    /// More than one choice (`n > 1`).
    pub choices: bool,
    /// Log probabilities (`logprobs: true`).
    pub logprobs: bool,
    /// Token biases (`logit_bias`).
    pub logit_bias: bool,
    /// Named participants (`messages[].name`).
    pub names: bool,
    /// Tokens of room kept for the answer.
    pub reserve: usize,
    /// The output limit the request set itself, if any.
    pub max_output: Option<u32>,
}

impl Needs {
    /// The needs of `req`; `routed` if a virtual model chooses the model (see
    /// [`DEFAULT_OUTPUT_RESERVE`]).
    pub fn of(req: &ChatRequest, routed: bool) -> Self {
        let default = if routed { DEFAULT_OUTPUT_RESERVE } else { 0 };
        let media = req.media();
        Self {
            vision: media.images,
            tools: req.has_tools(),
            json: req.wants_json(),
            openai_only: req.openai_only(media),
            choices: req.n.is_some_and(|n| n > 1),
            logprobs: req.logprobs == Some(true),
            logit_bias: req.logit_bias.is_some(),
            names: req.names_participants(),
            reserve: req.max_output().map_or(default, |m| m as usize),
            max_output: req.max_output(),
        }
    }
}

/// The capability a model lacks, if any (unknown capabilities are not held against it).
pub fn capability(info: &ModelInfo, needs: &Needs) -> Option<Exclusion> {
    let caps = info.capabilities?;
    if needs.tools && !caps.tools {
        Some(Exclusion::NoTools)
    } else if needs.vision && !caps.vision {
        Some(Exclusion::NoVision)
    } else if needs.json && !caps.json {
        Some(Exclusion::NoJson)
    } else {
        None
    }
}

/// Whether the request asks `info` for more output tokens than it writes (for a virtual
/// model's candidates: a model named explicitly is sent what the client asked, and its
/// provider answers for itself).
pub fn output(info: &ModelInfo, needs: &Needs) -> Option<Exclusion> {
    let (requested, max) = (needs.max_output?, info.max_output_tokens?);
    (requested > max).then_some(Exclusion::OutputLimit { requested, max })
}

/// Whether a provider speaking `protocol` cannot carry what the request needs: Anthropic's
/// Messages API has no `n`, no logprobs and no audio or file parts, so a virtual model must
/// not pick it for such a request (the translation would refuse it, or drop logprobs).
pub fn protocol(protocol: Protocol, needs: &Needs) -> Option<Exclusion> {
    match (protocol, needs.openai_only) {
        (Protocol::Anthropic, Some(feature)) => Some(Exclusion::OpenAiOnly { feature }),
        _ => None,
    }
}

/// Whether `provider`'s own API refuses or ignores what the request asks though its protocol
/// carries it, so a virtual model must not pick it: Groq answers `n > 1`, `logprobs`,
/// `logit_bias` and `messages[].name` with a 400 (its OpenAI-compatibility page), Ollama
/// ignores `n` (one choice comes back), and OpenAI's reasoning models take no `logprobs`.
/// A provider is Groq's or OpenAI's by its name (as the quick start and the catalog name
/// them) or its API's host.
pub fn provider_api(
    provider: &crate::providers::Provider,
    info: &ModelInfo,
    needs: &Needs,
) -> Option<Exclusion> {
    if !needs.choices && !needs.logprobs && !needs.logit_bias && !needs.names {
        return None;
    }
    let is = |name: &str, host: &str| &*provider.name == name || provider.base_url.contains(host);
    let groq = is("groq", "api.groq.com");
    let feature = if needs.choices && (groq || provider.protocol == Protocol::Ollama) {
        "n > 1"
    } else if needs.logprobs
        && (groq || (is("openai", "api.openai.com") && info.tags.iter().any(|t| t == "reasoning")))
    {
        "logprobs"
    } else if needs.logit_bias && groq {
        "logit_bias"
    } else if needs.names && groq {
        "messages[].name"
    } else {
        return None;
    };
    Some(Exclusion::ProviderLacks { feature })
}

/// Tokens the request needs in a context window no larger than `window`: a free upper
/// bound while that fits, else the prompt counted with the tokenizer (once per request).
pub fn needed(
    req: &ChatRequest,
    raw_tools: Option<&serde_json::Value>,
    needs: &Needs,
    window: usize,
) -> (usize, bool) {
    let bound = tokens::upper_bound(req, raw_tools) + needs.reserve;
    if bound <= window {
        return (bound, false);
    }
    (tokens::count(req, raw_tools) + needs.reserve, true)
}

/// Whether `info` can serve `req` at all: not an embedding model, with the capabilities
/// it needs and its prompt (plus the reserve) within the context window.
pub fn check(
    info: &ModelInfo,
    req: &ChatRequest,
    raw_tools: Option<&serde_json::Value>,
    needs: &Needs,
) -> Option<Exclusion> {
    if info.kind == ModelKind::Embedding {
        return Some(Exclusion::Embedding);
    }
    if let Some(x) = capability(info, needs) {
        return Some(x);
    }
    let window = info.context_window?;
    let (needed, _) = needed(req, raw_tools, needs, window as usize);
    (needed > window as usize).then_some(Exclusion::Context { needed, window })
}
