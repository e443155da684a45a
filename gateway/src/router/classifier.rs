//! Rule-based complexity classifier: features of the request → a tier and a score, in
//! microseconds. One Aho–Corasick pass finds every keyword of the last user message; a few
//! counts (code fences and code-like lines, math symbols, numbered steps, questions, length,
//! conversation depth, tools, system prompt size, requested `max_tokens`) complete the
//! picture. The thresholds below were set against the labelled set in
//! `e2e/classifier/prompts.jsonl`; the README documents them.

use std::sync::LazyLock;

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, AhoCorasickKind, MatchKind};
use serde::Serialize;

use crate::wire::{ChatRequest, Message};

/// How hard a prompt is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// Greetings, single facts, short transformations.
    Simple,
    /// Explanations, short code, summaries, emails.
    Moderate,
    /// Substantial code, design, multi-step work.
    Complex,
    /// Proofs, maths, logic puzzles, deduction.
    Reasoning,
}

impl Tier {
    /// Every tier, easiest first.
    pub const ALL: [Tier; 4] = [Tier::Simple, Tier::Moderate, Tier::Complex, Tier::Reasoning];

    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Simple => "simple",
            Tier::Moderate => "moderate",
            Tier::Complex => "complex",
            Tier::Reasoning => "reasoning",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Option<Tier> {
        Tier::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// The measured features, reported by the dry-run endpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Features {
    /// Words in the last user message.
    pub words: usize,
    /// Reasoning markers (prove, probability, step by step, ...).
    pub reasoning_markers: usize,
    /// Build/design markers (implement, design, refactor, ...).
    pub build_markers: usize,
    /// Explain/compose markers (explain, compare, write a ...).
    pub explain_markers: usize,
    /// Simple-task markers (translate, capital of, thanks, ...).
    pub simple_markers: usize,
    /// Programming languages and technologies named.
    pub tech_markers: usize,
    /// Fenced code blocks.
    pub code_blocks: usize,
    /// Lines that look like code.
    pub code_lines: usize,
    /// Mathematical symbols.
    pub math_symbols: usize,
    /// Numbered or bulleted instruction lines.
    pub steps: usize,
    /// Question marks.
    pub questions: usize,
    /// Messages in the conversation.
    pub depth: usize,
    /// Whether the message is an imperative request to produce code or a system (starts with
    /// write, implement, build, create, port, convert, refactor, design).
    pub imperative: bool,
    /// Requirement clauses (commas and `and`s) in an imperative request.
    pub clauses: usize,
    /// Whether tools are defined.
    pub tools: bool,
    /// Words of system prompt.
    pub system_words: usize,
    /// Requested completion limit.
    pub max_tokens: Option<u32>,
}

/// The classifier's verdict.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Classification {
    /// The tier.
    pub tier: Tier,
    /// A score in [0, 1]: each tier spans a quarter, higher is harder.
    pub score: f64,
    /// The learned estimate, in [0, 1], that the weak model falls short on this prompt where a
    /// strong one would not ([`super::strong_need`]); `auto` scales its quality weight by it.
    pub strong_need: f64,
    /// What it saw.
    pub features: Features,
}

#[derive(Clone, Copy, PartialEq)]
enum Cat {
    Reason,
    Build,
    Explain,
    Simple,
    Tech,
}

/// Keywords by category. A trailing `*` matches any word starting so; otherwise whole words.
const KEYWORDS: &[(Cat, &[&str])] = &[
    (
        Cat::Reason,
        &[
            "your reasoning",
            "prove*",
            "proof*",
            "derive*",
            "theorem",
            "lemma",
            "induction",
            "rigorous*",
            "justify",
            "step by step",
            "reason it out",
            "logically",
            "deduction",
            "deduce",
            "probability",
            "expected number",
            "how many ways",
            "in how many ways",
            "puzzle",
            "riddle",
            "paradox",
            "irrational",
            "divisible",
            "coprime",
            "uncountable",
            "bipartite",
            "pumping lemma",
            "recurrence",
            "eigenvalue*",
            "integral",
            "derivative",
            "limit of",
            "solve for",
            "solve the system",
            "integer solutions",
            "real solutions",
            "minimum of",
            "decidable",
            "reduces to",
            "argument valid",
            "telling the truth",
            "counterfeit",
            "monty hall",
            "trailing zeros",
            "work through",
            "show that",
            "show your work",
            "show each step",
            "crossings",
            "optimal",
            "beweise*",
            "démontr*",
            "demuestr*",
            "証明",
            "доказ*",
            "correctness",
            "why it works",
            "what should the first",
        ],
    ),
    (
        Cat::Build,
        &[
            "implement*",
            "design",
            "designs",
            "architecture",
            "architect",
            "refactor*",
            "migrate*",
            "migration",
            "debug*",
            "deadlock*",
            "optimise*",
            "optimize*",
            "build a",
            "build an",
            "detailed",
            "technical design",
            "trade-off*",
            "tradeoff*",
            "scalab*",
            "scaling",
            "concurren*",
            "distributed",
            "microservice*",
            "pipeline",
            "reconcil*",
            "failover",
            "with tests",
            "unit tests",
            "include tests",
            "including tests",
            "add tests",
            "plan a",
            "propose",
            "implementation plan",
            "requirements",
            "rate limiter",
            "observability",
            "terraform",
            "kubernetes",
            "docker-compose",
            "entwirf",
            "écris un script",
            "implémente*",
            "diseña",
            "pull request",
            "stack trace",
            "port this",
            "interpreter",
            "compiler",
            "allocator",
            "scheduler",
            "sync protocol",
            "module",
            "library",
            "server",
            "service",
            "multi-tenant",
            "regression test",
            "plugin system",
            "backpressure",
            "thread-safe",
            "graceful shutdown",
            "retries",
            "idempoten*",
            "canary",
            "rollback*",
            "tests",
            "handles",
            "supports",
            "supporting",
            "error handling",
        ],
    ),
    (
        Cat::Explain,
        &[
            "explain*",
            "what is the difference",
            "difference between",
            "compare",
            "summarise",
            "summarize",
            "describe",
            "how does",
            "how do i",
            "how can i",
            "pros and cons",
            "advantages",
            "ventajas",
            "tips",
            "write a",
            "example",
            "itinerary",
            "email",
            "letter",
            "agenda",
            "steps to",
            "what are",
            "what causes",
            "why",
            "explique*",
            "erkläre*",
            "explica*",
            "説明",
            "объясни*",
            "review",
            "suggest*",
            "regular expression",
            "convert this",
            "snippet",
            "one-liner",
            "query",
            "draft",
            "description",
            "features of",
        ],
    ),
    (
        Cat::Simple,
        &[
            "hi",
            "hello",
            "thanks",
            "thank you",
            "good night",
            "capital of",
            "translate",
            "define",
            "synonym",
            "spell",
            "convert",
            "how do you say",
            "what year",
            "who wrote",
            "who painted",
            "plural",
            "opposite",
            "one-word",
            "one word",
            "fix the typos",
            "count the words",
            "extract all",
            "uppercase",
            "bulleted list",
            "sort these",
            "correct the grammar",
            "recommend a name",
            "joke",
            "what time",
            "how many days",
            "how many legs",
            "chemical symbol",
            "largest",
            "boiling point",
            "freezing point",
            "square root of",
            "capitale",
            "cuántos",
            "wie spät",
            "首都",
            "как сказать",
            "friendlier",
            "one sentence",
            "what colour",
            "what color",
            "primary colors",
            "is a tomato",
        ],
    ),
    (
        Cat::Tech,
        &[
            "python",
            "rust",
            "golang",
            "in go",
            "java",
            "javascript",
            "typescript",
            "c++",
            "c program",
            "c function",
            "kotlin",
            "swift",
            "ruby",
            "php",
            "sql",
            "bash",
            "haskell",
            "ocaml",
            "scala",
            "elixir",
            "react",
            "vue",
            "node.js",
            "django",
            "rails",
            "spark",
            "graphql",
            "websocket",
            "css",
            "html",
            "regex",
            "api",
            "json",
            "yaml",
            "docker",
            "git",
            "postgresql",
            "redis",
            "mysql",
            "android",
            "asyncio",
            "tokio",
            "express.js",
        ],
    ),
];

struct Matcher {
    ac: AhoCorasick,
    /// Per pattern: category, and whether it must end on a word boundary.
    meta: Vec<(Cat, bool)>,
}

static MATCHER: LazyLock<Matcher> = LazyLock::new(|| {
    let mut patterns = Vec::new();
    let mut meta = Vec::new();
    for (cat, words) in KEYWORDS {
        for w in *words {
            let (p, whole) = match w.strip_suffix('*') {
                Some(p) => (p, false),
                None => (*w, true),
            };
            patterns.push(p);
            meta.push((*cat, whole));
        }
    }
    // Patterns are lowercase and the text is lowercased once before the search: a
    // case-sensitive automaton is half the size, which keeps it in cache on long prompts.
    let ac = AhoCorasickBuilder::new()
        .match_kind(MatchKind::LeftmostLongest)
        // A DFA: a few hundred KB once, and the fastest search on long prompts.
        .kind(Some(AhoCorasickKind::DFA))
        .build(&patterns)
        .expect("classifier keywords build an automaton");
    Matcher { ac, meta }
});

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// Builds the matcher now, so the first request does not pay for it.
pub fn warm_up() {
    LazyLock::force(&MATCHER);
}

fn last_user_text(req: &ChatRequest) -> std::borrow::Cow<'_, str> {
    req.messages
        .iter()
        .rev()
        .find_map(|m| match m {
            Message::User { content, .. } => Some(content.text_cow()),
            _ => None,
        })
        .unwrap_or_default()
}

/// Messages longer than this are searched for keywords only at their start and end.
const KEYWORD_SCAN_LIMIT: usize = 3072;
/// How much of a long message's start is searched.
const KEYWORD_HEAD: usize = 2048;
/// How much of a long message's end is searched.
const KEYWORD_TAIL: usize = 1024;

/// The parts of a message searched for keywords: all of a short one; the first 2 KB and
/// last 1 KB of a long one, where instructions sit ("Summarise the following: …", "…
/// translate the above"). Keeps classification time flat however long the pasted text.
pub(super) fn keyword_windows(text: &str) -> (&str, Option<(usize, &str)>) {
    if text.len() <= KEYWORD_SCAN_LIMIT {
        return (text, None);
    }
    let mut head_end = KEYWORD_HEAD;
    while !text.is_char_boundary(head_end) {
        head_end -= 1;
    }
    let mut tail_start = text.len() - KEYWORD_TAIL;
    while !text.is_char_boundary(tail_start) {
        tail_start += 1;
    }
    (&text[..head_end], Some((tail_start, &text[tail_start..])))
}

/// Measures the features of a request.
pub fn features(req: &ChatRequest) -> Features {
    features_of(req, &last_user_text(req))
}

/// The features of `req` whose last user message is `text`.
fn features_of(req: &ChatRequest, text: &str) -> Features {
    let bytes = text.as_bytes();
    let mut f = Features {
        depth: req.messages.len(),
        tools: req.has_tools(),
        max_tokens: req.max_output(),
        system_words: req
            .messages
            .iter()
            .filter_map(|m| match m {
                Message::System { content, .. } | Message::Developer { content, .. } => {
                    Some(content.text_cow().split_whitespace().count())
                }
                _ => None,
            })
            .sum(),
        ..Features::default()
    };
    let m = &*MATCHER;
    let lower = text.to_ascii_lowercase();
    let (head, tail) = keyword_windows(&lower);
    let hits = m.ac.find_iter(head).map(|h| (h, 0)).chain(
        tail.into_iter()
            .flat_map(|(off, t)| m.ac.find_iter(t).map(move |h| (h, off))),
    );
    for (hit, off) in hits {
        let (cat, whole) = m.meta[hit.pattern().as_usize()];
        let (s, e) = (hit.start() + off, hit.end() + off);
        let starts_word = s == 0 || !is_word_byte(bytes[s - 1]) || !bytes[s].is_ascii();
        let ends_word =
            !whole || e == bytes.len() || !is_word_byte(bytes[e]) || !bytes[e - 1].is_ascii();
        if !(starts_word && ends_word) {
            continue;
        }
        match cat {
            Cat::Reason => f.reasoning_markers += 1,
            Cat::Build => f.build_markers += 1,
            Cat::Explain => f.explain_markers += 1,
            Cat::Simple => f.simple_markers += 1,
            Cat::Tech => f.tech_markers += 1,
        }
    }
    let lower_start: String = text
        .trim_start()
        .chars()
        .take(12)
        .collect::<String>()
        .to_ascii_lowercase();
    f.imperative = [
        "write",
        "implement",
        "build",
        "create",
        "port ",
        "convert",
        "refactor",
        "design",
        "écris",
        "entwirf",
    ]
    .iter()
    .any(|v| lower_start.starts_with(v));
    if f.imperative {
        f.clauses = text.matches(", ").count() + text.matches(" and ").count();
    }
    f.code_blocks = text.matches("```").count() / 2;
    for line in text.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix(|c: char| c.is_ascii_digit()) {
            if rest.starts_with('.') || rest.starts_with(')') {
                f.steps += 1;
            }
        } else if t.starts_with("- ") || t.starts_with("* ") {
            f.steps += 1;
        }
        let codeish = t.ends_with(';')
            || t.ends_with('{')
            || t.starts_with('}')
            || t.contains("=>")
            || t.contains(" -> ")
            || t.starts_with("def ")
            || t.starts_with("fn ")
            || t.starts_with("func ")
            || t.starts_with("#include")
            || t.starts_with("import ")
            || t.starts_with("return ");
        if codeish {
            f.code_lines += 1;
        }
    }
    // Words, questions and math symbols in one pass; ASCII bytes need no UTF-8 decoding.
    let mut in_word = false;
    for (i, &b) in bytes.iter().enumerate() {
        let space = b.is_ascii_whitespace();
        if !space && !in_word {
            f.words += 1;
        }
        in_word = !space;
        match b {
            b'?' => f.questions += 1,
            b'^' => f.math_symbols += 1,
            0xC0.. => match text[i..].chars().next() {
                Some('？') => f.questions += 1,
                Some(
                    '√' | '∫' | '∑' | 'π' | '≤' | '≥' | '→' | '∞' | '×' | '÷' | '∩' | '∪' | 'Ω',
                ) => f.math_symbols += 1,
                _ => {}
            },
            _ => {}
        }
    }
    f
}

/// Classifies a request.
pub fn classify(req: &ChatRequest) -> Classification {
    let text = last_user_text(req);
    let f = features_of(req, &text);
    let capped = |n: usize, max: usize| n.min(max) as f64;

    let reason = 0.45 * capped(f.reasoning_markers, 3) + 0.08 * capped(f.math_symbols, 5);
    let mut build = 0.3 * capped(f.build_markers, 4)
        + if f.code_blocks > 0 { 0.25 } else { 0.0 }
        + 0.04 * capped(f.code_lines, 10)
        + if f.tech_markers > 0 && f.build_markers > 0 {
            0.15
        } else {
            0.0
        }
        + 0.06 * capped(f.steps, 5);
    // A request to write software in a named technology, with several stated requirements.
    if f.imperative && f.tech_markers > 0 && f.words >= 12 {
        build += 0.1 * capped(f.clauses, 3) + 0.1;
    }
    if f.words > 150 && f.simple_markers == 0 {
        build += 0.15;
    }
    if f.system_words > 200 {
        build += 0.15;
    }
    if f.tools {
        build += 0.1;
    }
    if f.max_tokens.is_some_and(|m| m >= 4000) {
        build += 0.15;
    }
    build += 0.02 * capped(f.depth.saturating_sub(1), 10);
    let explain = 0.3 * capped(f.explain_markers, 3)
        + if f.tech_markers > 0 { 0.2 } else { 0.0 }
        + if f.words > 25 { 0.1 } else { 0.0 }
        + if f.questions >= 2 { 0.1 } else { 0.0 };

    let (tier, strength) = if reason >= 0.45 && reason >= 0.8 * build {
        (Tier::Reasoning, reason / 1.5)
    } else if build >= 0.5 {
        (Tier::Complex, (build - 0.5) / 1.0)
    } else if f.simple_markers > 0 && explain < 0.5 && build < 0.3 {
        (Tier::Simple, 1.0 - 0.5 * explain)
    } else if build >= 0.25 || explain >= 0.25 {
        (Tier::Moderate, (build + explain) / 1.5)
    } else {
        (Tier::Simple, 0.5 + explain)
    };
    let idx = Tier::ALL.iter().position(|t| *t == tier).unwrap_or(0) as f64;
    Classification {
        tier,
        score: (0.25 * idx + 0.25 * strength.clamp(0.0, 0.999)).min(1.0),
        strong_need: super::strong_need::predict(&text),
        features: f,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(text: &str) -> ChatRequest {
        serde_json::from_value(
            serde_json::json!({"model": "auto", "messages": [{"role": "user", "content": text}]}),
        )
        .unwrap()
    }

    #[test]
    fn clear_cases() {
        let cases = [
            ("Hi!", Tier::Simple),
            ("What is the capital of France?", Tier::Simple),
            ("Explain how a hash map works.", Tier::Moderate),
            (
                "Implement an LRU cache in Rust with unit tests.",
                Tier::Complex,
            ),
            (
                "Prove that there are infinitely many primes.",
                Tier::Reasoning,
            ),
        ];
        for (text, tier) in cases {
            let c = classify(&req(text));
            assert_eq!(c.tier, tier, "{text}: {c:?}");
            let lo = 0.25 * Tier::ALL.iter().position(|t| *t == tier).unwrap() as f64;
            assert!(
                c.score >= lo && c.score < lo + 0.25,
                "{text}: score {} outside its tier's band",
                c.score
            );
        }
    }

    #[test]
    fn long_messages_are_searched_at_both_ends() {
        let filler = "The committee met on Tuesday to discuss the budget. ".repeat(200);
        let f = features(&req(&format!(
            "Please prove this. {filler} Then translate it."
        )));
        assert_eq!((f.reasoning_markers, f.simple_markers), (1, 1), "{f:?}");
        let f = features(&req(&format!("{filler} prove {filler}")));
        assert_eq!(
            f.reasoning_markers, 0,
            "the middle of a long paste is not searched"
        );
        assert_eq!(
            f.words,
            2 * filler.split_whitespace().count() + 1,
            "words count the whole message"
        );
        let cjk = "証明".repeat(2000);
        let _ = features(&req(&cjk));
    }

    #[test]
    fn keywords_match_whole_words_only() {
        let f = features(&req("This machine is within reach"));
        assert_eq!(
            f.simple_markers, 0,
            "`hi` inside words must not count: {f:?}"
        );
        let f = features(&req("Go and prove it; the proofs are short"));
        assert_eq!(f.reasoning_markers, 2, "{f:?}");
    }
}
