//! The `routing` section: virtual models (strategies, weights, candidates, local
//! preference, hedging, per-route cache) and failover.

use std::collections::{BTreeSet, HashSet};
use std::time::Duration;

use llm_gateway_crds::{
    AllOpen, CandidateSelector, HedgeConfig, RoutingConfig, VirtualModelConfig,
};

use super::super::routing::{builtin_virtuals, default_local_preference, Hedge, VirtualSpec};
use super::super::{
    FailoverSettings, ProviderSettings, RoutingSettings, DEFAULT_LATENCY_DECAY_SECS,
};
use super::{positive_secs, FieldError};

pub(super) fn routing(
    r: &RoutingConfig,
    providers: &[ProviderSettings],
) -> Result<RoutingSettings, FieldError> {
    let f = r.failover.clone().unwrap_or_default();
    let failover = FailoverSettings {
        max_attempts: match f.max_attempts {
            Some(0) => return Err(("routing.failover.max_attempts".into(), "must be > 0".into())),
            Some(n) => n,
            None => 3,
        },
        when_all_open: f.when_all_open.unwrap_or(AllOpen::Reject),
        deadline: positive_secs(f.deadline_secs, 120.0)
            .map_err(|m| ("routing.failover.deadline_secs".to_owned(), m))?,
    };
    let decay = r.latency_decay_secs.unwrap_or(DEFAULT_LATENCY_DECAY_SECS);
    if !(decay.is_finite() && decay > 0.0) {
        return Err(("routing.latency_decay_secs".into(), super::not_secs(decay)));
    }
    let known_tags: BTreeSet<String> = ["local", "tools", "vision", "json"]
        .into_iter()
        .map(str::to_owned)
        .chain(
            providers
                .iter()
                .flat_map(|p| p.models.iter().flat_map(|m| m.tags.iter().cloned())),
        )
        .collect();
    let mut virtuals = builtin_virtuals();
    let mut seen = HashSet::new();
    for (i, v) in r.virtual_models.iter().enumerate() {
        let at = |f: &str| format!("routing.virtual_models[{i}].{f}");
        if v.name.is_empty() || v.name.contains('/') || v.name.chars().any(char::is_whitespace) {
            return Err((
                at("name"),
                format!(
                    "`{}` is not a valid virtual model name (non-empty, no `/`, no spaces)",
                    v.name
                ),
            ));
        }
        // One definition per name and client: a name may have one for everyone and one per
        // tenant or namespace (the most specific wins for a caller).
        let clients: Vec<Option<&str>> = match &v.clients {
            None => vec![None],
            Some(c) if c.is_empty() => {
                return Err((
                    at("clients"),
                    "lists no tenant or namespace; omit it for everyone".into(),
                ))
            }
            Some(c) => c.iter().map(|x| Some(x.as_str())).collect(),
        };
        for c in clients {
            if !seen.insert((v.name.as_str(), c)) {
                return Err((
                    at("name"),
                    match c {
                        None => format!("duplicate virtual model `{}`", v.name),
                        Some(c) => format!(
                            "virtual model `{}` is defined twice for client `{c}`",
                            v.name
                        ),
                    },
                ));
            }
        }
        let spec = virtual_model(v, &at, providers, &known_tags)?;
        // A definition for everyone replaces the built-in of the same name.
        match virtuals
            .iter_mut()
            .find(|x| x.name == v.name && x.clients.is_none() && spec.clients.is_none())
        {
            Some(existing) => *existing = spec,
            None => virtuals.push(spec),
        }
    }
    Ok(RoutingSettings {
        virtuals,
        latency_decay: Duration::from_secs_f64(decay),
        failover,
    })
}

/// One virtual model of `routing.virtual_models`, its fields named by `at`.
fn virtual_model(
    v: &VirtualModelConfig,
    at: &dyn Fn(&str) -> String,
    providers: &[ProviderSettings],
    known_tags: &BTreeSet<String>,
) -> Result<VirtualSpec, FieldError> {
    if let Some(p) = providers
        .iter()
        .find(|p| p.models.iter().any(|m| m.name == v.name))
    {
        return Err((
            at("name"),
            format!(
                "`{}` is already a model of provider `{}`; pick another name",
                v.name, p.name
            ),
        ));
    }
    if let Some(w) = v.weights {
        for (f, x) in [
            ("cost", w.cost),
            ("quality", w.quality),
            ("latency", w.latency),
        ] {
            if !(x.is_finite() && x >= 0.0) {
                return Err((
                    at(&format!("weights.{f}")),
                    format!("{x} must be a number >= 0"),
                ));
            }
        }
        if w.cost + w.quality + w.latency <= 0.0 {
            return Err((at("weights"), "at least one weight must be > 0".into()));
        }
    }
    if let Some(p) = v.local_preference.filter(|p| !(0.0..=1.0).contains(p)) {
        return Err((
            at("local_preference"),
            format!("{p} must be between 0 and 1"),
        ));
    }
    if let Some(sel) = &v.candidates {
        candidates(sel, at, providers, known_tags)?;
    }
    let hedge = match &v.hedge {
        None => None,
        Some(h) => Some(hedge(h, at)?),
    };
    let spec = VirtualSpec {
        name: v.name.clone(),
        strategy: v.strategy,
        weights: v.weights,
        selector: v.candidates.clone(),
        local_preference: v
            .local_preference
            .or_else(|| default_local_preference(v.strategy)),
        classify: v.classify.unwrap_or(true),
        hedge,
        clients: v.clients.clone(),
    };
    Ok(spec)
}

/// A virtual model's `candidates`: every provider, model and tag it names must exist.
fn candidates(
    sel: &CandidateSelector,
    at: &dyn Fn(&str) -> String,
    providers: &[ProviderSettings],
    known_tags: &BTreeSet<String>,
) -> Result<(), FieldError> {
    for (j, p) in sel.providers.iter().enumerate() {
        if !providers.iter().any(|x| x.name == *p) {
            return Err((
                at(&format!("candidates.providers[{j}]")),
                format!("no provider named `{p}`"),
            ));
        }
    }
    for (j, m) in sel.models.iter().enumerate() {
        let known = providers.iter().any(|p| {
            let qualified = m.strip_prefix(&format!("{}/", p.name));
            p.models
                .iter()
                .any(|x| x.name == *m || Some(x.name.as_str()) == qualified)
                || (p.discover_models && qualified.is_some())
        });
        if !known {
            return Err((
                at(&format!("candidates.models[{j}]")),
                format!("no enabled provider serves a model named `{m}`"),
            ));
        }
    }
    for (j, t) in sel.tags.iter().enumerate() {
        if !known_tags.contains(t) {
            let list: Vec<&str> = known_tags.iter().map(String::as_str).collect();
            return Err((
                at(&format!("candidates.tags[{j}]")),
                format!("unknown tag `{t}`; known tags: {}", list.join(", ")),
            ));
        }
    }
    if sel.providers.is_empty() && sel.models.is_empty() && sel.tags.is_empty() {
        return Err((
            at("candidates"),
            "lists no providers, models or tags; omit it to use every model".into(),
        ));
    }
    Ok(())
}

/// A virtual model's `hedge`: exactly one of a delay or a quantile.
fn hedge(h: &HedgeConfig, at: &dyn Fn(&str) -> String) -> Result<Hedge, FieldError> {
    Ok(match (h.after_secs, h.after_quantile) {
        (Some(s), None) if s.is_finite() && s > 0.0 && s < 1e6 => Hedge::Delay { secs: s },
        (Some(s), None) => return Err((at("hedge.after_secs"), super::not_secs(s))),
        (None, Some(q)) if q > 0.0 && q < 1.0 => Hedge::Quantile { q },
        (None, Some(q)) => {
            return Err((
                at("hedge.after_quantile"),
                format!("{q} must be between 0 and 1 (exclusive), e.g. 0.95"),
            ))
        }
        _ => {
            return Err((
                at("hedge"),
                "set exactly one of after_secs or after_quantile".into(),
            ))
        }
    })
}

#[cfg(test)]
mod routing_tests {
    use super::*;
    use crate::config::file::parse;
    use crate::config::validate;
    use llm_gateway_crds::Strategy;

    #[test]
    fn config_virtual_models_replace_and_extend_the_builtins() {
        let yaml = "providers: [{name: ollama, discover_models: false}]\nrouting:\n  latency_decay_secs: 5\n  virtual_models:\n  - {name: auto, strategy: quality}\n  - {name: coder, strategy: balanced, local_preference: 0.9, candidates: {tags: [code]}, weights: {quality: 2, cost: 1}}\n";
        let s = validate(&parse("t", yaml).unwrap(), "t", &|_| None).unwrap();
        let names: Vec<&str> = s.routing.virtuals.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["auto", "fast", "cheap", "quality", "coder"]);
        assert_eq!(s.routing.virtuals[0].strategy, Strategy::Quality);
        assert_eq!(
            s.routing.virtuals[0].local_preference, None,
            "quality's default"
        );
        assert_eq!(s.routing.virtuals[4].local_preference, Some(0.9));
        assert_eq!(s.routing.latency_decay, Duration::from_secs(5));
    }
}
