//! Routing of virtual model names. Until the scoring engine lands, each virtual name maps to
//! one default model chosen from the catalog priors when the configuration is loaded:
//! `cheap` the lowest blended price, `quality` the highest quality prior, `fast` the lowest
//! time-to-first-token prior, `auto` the best even mix of normalised price and quality.

use crate::models::info::ModelInfo;

/// A virtual model name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum VirtualModel {
    /// Balanced.
    Auto,
    /// Lowest latency.
    Fast,
    /// Lowest cost.
    Cheap,
    /// Highest quality.
    Quality,
}

impl VirtualModel {
    /// Every virtual model.
    pub const ALL: [VirtualModel; 4] = [Self::Auto, Self::Fast, Self::Cheap, Self::Quality];

    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Fast => "fast",
            Self::Cheap => "cheap",
            Self::Quality => "quality",
        }
    }

    /// Parses a requested model name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == name)
    }
}

/// Picks the default model for a virtual name among priced chat models; ties go to the
/// earlier candidate (config order).
pub fn pick_default<'a>(
    v: VirtualModel,
    candidates: impl Iterator<Item = (usize, &'a ModelInfo)>,
) -> Option<usize> {
    let priced: Vec<(usize, &ModelInfo, f64)> = candidates
        .filter_map(|(i, m)| m.price.map(|p| (i, m, p.blended())))
        .collect();
    let (lo, hi) = priced
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), (_, _, p)| {
            (lo.min(*p), hi.max(*p))
        });
    let cost_score = |p: f64| if hi > lo { (hi - p) / (hi - lo) } else { 1.0 };
    let score = |m: &ModelInfo, p: f64| match v {
        VirtualModel::Cheap => cost_score(p) + 1e-3 * m.quality,
        VirtualModel::Quality => m.quality + 1e-3 * cost_score(p),
        VirtualModel::Fast => -m.latency_ms + 1e-3 * m.quality,
        VirtualModel::Auto => 0.5 * cost_score(p) + 0.5 * m.quality,
    };
    let mut best: Option<(usize, f64)> = None;
    for (i, m, p) in priced {
        let s = score(m, p);
        if best.is_none_or(|(_, b)| s > b) {
            best = Some((i, s));
        }
    }
    best.map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::info::Price;
    use llm_gateway_crds::ModelKind;

    fn m(name: &str, price: f64, quality: f64, latency: f64) -> ModelInfo {
        ModelInfo {
            name: name.into(),
            kind: ModelKind::Chat,
            price: Some(Price {
                input_per_mtok: price,
                output_per_mtok: price,
            }),
            context_window: None,
            max_output_tokens: None,
            capabilities: None,
            quality,
            latency_ms: latency,
        }
    }

    #[test]
    fn each_virtual_model_picks_its_default() {
        let ms = [
            m("cheap", 0.1, 0.5, 500.0),
            m("strong", 10.0, 0.95, 900.0),
            m("quick", 1.0, 0.6, 100.0),
            m("balanced", 0.5, 0.85, 400.0),
        ];
        let pick = |v| {
            ms[pick_default(v, ms.iter().enumerate()).unwrap()]
                .name
                .clone()
        };
        assert_eq!(pick(VirtualModel::Cheap), "cheap");
        assert_eq!(pick(VirtualModel::Quality), "strong");
        assert_eq!(pick(VirtualModel::Fast), "quick");
        assert_eq!(pick(VirtualModel::Auto), "balanced");
    }

    #[test]
    fn unpriced_models_and_empty_sets_pick_nothing() {
        let mut x = m("x", 1.0, 0.9, 1.0);
        x.price = None;
        assert_eq!(
            pick_default(VirtualModel::Auto, [(0, &x)].into_iter()),
            None
        );
        assert_eq!(pick_default(VirtualModel::Auto, std::iter::empty()), None);
    }
}
