//! What the gateway knows about one upstream model, and how its usage is priced.

use llm_gateway_crds::{Capability, ModelConfig, ModelKind};

use crate::wire::Usage;

/// One model of one provider, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// The provider's name for it, sent upstream.
    pub name: String,
    /// Chat or embedding.
    pub kind: ModelKind,
    /// Price, when known.
    pub price: Option<Price>,
    /// Context window in tokens, when known.
    pub context_window: Option<u32>,
    /// Largest completion, when known.
    pub max_output_tokens: Option<u32>,
    /// Capabilities, when known; unknown capabilities are not enforced.
    pub capabilities: Option<Caps>,
    /// Quality prior in [0, 1].
    pub quality: f64,
    /// Time-to-first-token prior in ms.
    pub latency_ms: f64,
    /// Tags for candidate selection and tier quality (`code`, `reasoning`, ...).
    pub tags: Vec<String>,
    /// Its own `first_token_timeout_secs`, when configured.
    pub first_token_timeout: Option<std::time::Duration>,
}

/// Default quality prior of a model nobody rated.
pub const UNKNOWN_QUALITY: f64 = 0.5;
/// Default latency prior of a model nobody measured.
pub const UNKNOWN_LATENCY_MS: f64 = 1000.0;

impl ModelInfo {
    /// Builds the info from a fully merged config entry.
    pub fn from_config(m: &ModelConfig) -> Self {
        let price = match (m.input_usd_per_mtok, m.output_usd_per_mtok) {
            (Some(i), Some(o)) => Some(Price {
                input_per_mtok: i,
                output_per_mtok: o,
            }),
            (Some(i), None) if m.kind == Some(ModelKind::Embedding) => Some(Price {
                input_per_mtok: i,
                output_per_mtok: 0.0,
            }),
            _ => None,
        };
        Self {
            name: m.name.clone(),
            kind: m.kind.unwrap_or(ModelKind::Chat),
            price,
            context_window: m.context_window,
            max_output_tokens: m.max_output_tokens,
            capabilities: m.capabilities.as_deref().map(Caps::from_list),
            quality: m.quality.unwrap_or(UNKNOWN_QUALITY),
            latency_ms: m.latency_ms.unwrap_or(UNKNOWN_LATENCY_MS),
            tags: m.tags.clone().unwrap_or_default(),
            first_token_timeout: m
                .first_token_timeout_secs
                .map(std::time::Duration::from_secs_f64),
        }
    }
}

/// Capabilities as flags.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Caps {
    /// Function calling.
    pub tools: bool,
    /// Image input.
    pub vision: bool,
    /// JSON output.
    pub json: bool,
}

impl Caps {
    /// From the config list.
    pub fn from_list(list: &[Capability]) -> Self {
        Self {
            tools: list.contains(&Capability::Tools),
            vision: list.contains(&Capability::Vision),
            json: list.contains(&Capability::Json),
        }
    }
}

/// List price in USD per 1M tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    /// Per 1M prompt tokens.
    pub input_per_mtok: f64,
    /// Per 1M completion tokens.
    pub output_per_mtok: f64,
}

impl Price {
    /// Cost in USD of the given usage.
    pub fn cost(&self, usage: &Usage) -> f64 {
        (usage.prompt_tokens as f64 * self.input_per_mtok
            + usage.completion_tokens as f64 * self.output_per_mtok)
            / 1_000_000.0
    }

    /// Mean of input and output price, for ranking by cost.
    pub fn blended(&self) -> f64 {
        (self.input_per_mtok + self.output_per_mtok) / 2.0
    }
}

/// Formats a USD amount for a header: plain decimal, no exponent, trailing zeros trimmed.
pub fn format_usd(v: f64) -> String {
    trim_usd(&format!("{v:.10}")).to_owned()
}

/// `v` formatted as [`format_usd`] does, into `buf` (no allocation: every response's cost
/// header goes through it); `None` if it does not fit.
pub fn format_usd_in(v: f64, buf: &mut [u8]) -> Option<&str> {
    use std::io::Write;
    let mut cur = std::io::Cursor::new(&mut *buf);
    write!(cur, "{v:.10}").ok()?;
    let n = usize::try_from(cur.position()).ok()?;
    std::str::from_utf8(&buf[..n]).ok().map(trim_usd)
}

/// A fixed-point decimal without its trailing zeros (and point).
fn trim_usd(s: &str) -> &str {
    let s = s.trim_end_matches('0');
    s.strip_suffix('.').unwrap_or(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage(p: u64, c: u64) -> Usage {
        Usage {
            prompt_tokens: p,
            completion_tokens: c,
            total_tokens: p + c,
            prompt_tokens_details: None,
        }
    }

    #[test]
    fn cost_is_tokens_times_price_per_million() {
        let price = Price {
            input_per_mtok: 0.15,
            output_per_mtok: 0.60,
        };
        let cases = [
            (0, 0, 0.0),
            (1_000_000, 0, 0.15),
            (0, 1_000_000, 0.60),
            (1000, 500, 0.00015 + 0.0003),
        ];
        for (p, c, want) in cases {
            let got = price.cost(&usage(p, c));
            assert!((got - want).abs() < 1e-12, "{p}/{c}: {got} != {want}");
        }
    }

    #[test]
    fn usd_is_formatted_without_exponent() {
        assert_eq!(format_usd(0.00045), "0.00045");
        assert_eq!(format_usd(0.0), "0");
        assert_eq!(format_usd(12.5), "12.5");
        assert_eq!(format_usd(1e-9), "0.000000001");
        let mut buf = [0u8; 48];
        for v in [0.00045, 0.0, 12.5, 1e-9, 123_456.789] {
            assert_eq!(format_usd_in(v, &mut buf), Some(format_usd(v).as_str()));
        }
        assert_eq!(format_usd_in(1e40, &mut buf), None);
    }

    #[test]
    fn missing_output_price_is_unknown_for_chat_but_zero_for_embeddings() {
        let mut m = ModelConfig {
            name: "x".into(),
            input_usd_per_mtok: Some(1.0),
            ..Default::default()
        };
        assert_eq!(ModelInfo::from_config(&m).price, None);
        m.kind = Some(ModelKind::Embedding);
        assert_eq!(
            ModelInfo::from_config(&m).price.unwrap().output_per_mtok,
            0.0
        );
    }
}
