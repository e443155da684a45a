//! What the gateway has learned about providers and models, kept across configurations.
//!
//! A new configuration builds new [`super::Provider`]s and a new registry, but a provider or
//! model that is still there keeps, by name, its circuit breaker, concurrency limit, latency
//! estimates and learned deadlines; a provider whose connection settings are unchanged keeps
//! its HTTP client and so its pooled connections. What a configuration drops is forgotten
//! once the next one is live (requests still running on it hold their own references).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::breaker::{Breaker, BreakerConfig};
use crate::deadline::Deadlines;
use crate::latency::LatencyStats;
use std::sync::atomic::{AtomicU64, Ordering};

use super::limiter::Limiter;

/// One provider's learned state.
#[derive(Debug, Clone)]
pub struct ProviderState {
    /// The provider-wide breaker.
    pub breaker: Arc<Breaker>,
    /// The adaptive concurrency limit.
    pub limiter: Arc<Limiter>,
    /// Learned deadlines of models the catalog does not list.
    pub unlisted_deadlines: Arc<Deadlines>,
    /// The concurrency ceiling the limiter was built with.
    max_concurrency: Option<usize>,
    /// The HTTP clients (one per serving thread), and the settings they were built from.
    client: Option<(String, Clients)>,
}

/// A provider's HTTP clients, one per [`crate::threads::slot`]: each
/// thread's upstream connections are driven by that thread, so a request never waits for
/// another thread to read its response.
pub type Clients = Arc<[crate::providers::transport::Client]>;

/// One model's learned state.
#[derive(Debug, Clone)]
pub struct ModelState {
    /// Latency estimates.
    pub latency: Arc<LatencyStats>,
    /// The model's breaker.
    pub breaker: Arc<Breaker>,
    /// Learned first-content deadlines.
    pub deadlines: Arc<Deadlines>,
    /// What `bench` measured of it.
    pub measured: Arc<MeasuredQuality>,
}

/// Measured quality per tier (easiest first), by (provider, model).
pub type MeasuredByModel = HashMap<(String, String), [Option<f64>; 4]>;

/// The learned state of every provider and model, by name.
#[derive(Debug, Default)]
pub struct Learned {
    providers: Mutex<HashMap<String, ProviderState>>,
    models: Mutex<HashMap<(String, String), ModelState>>,
    /// The latest measurements by (provider, model), also for models no configuration has
    /// yet: one added later starts with them.
    measured: Mutex<MeasuredByModel>,
}

impl Learned {
    /// The state of provider `name`: kept, but a breaker whose thresholds changed and a
    /// limiter whose ceiling changed start afresh.
    pub fn provider(
        &self,
        name: &str,
        breaker_config: BreakerConfig,
        max_concurrency: Option<usize>,
    ) -> ProviderState {
        let mut g = self.providers.lock().unwrap_or_else(|e| e.into_inner());
        let s = g.entry(name.to_owned()).or_insert_with(|| ProviderState {
            breaker: Arc::new(Breaker::new(breaker_config, Instant::now())),
            limiter: new_limiter(max_concurrency),
            unlisted_deadlines: Arc::default(),
            max_concurrency,
            client: None,
        });
        if s.breaker.config() != breaker_config {
            s.breaker = Arc::new(Breaker::new(breaker_config, Instant::now()));
        }
        if s.max_concurrency != max_concurrency {
            s.limiter = new_limiter(max_concurrency);
            s.max_concurrency = max_concurrency;
        }
        s.clone()
    }

    /// The HTTP clients of provider `name` built from settings `key`: the old ones if the key
    /// is the same (their pooled connections stay warm), else one `build()` per
    /// [`crate::threads::slots`].
    pub fn client(
        &self,
        name: &str,
        key: String,
        build: impl Fn() -> reqwest::Result<crate::providers::transport::Client>,
    ) -> reqwest::Result<Clients> {
        let mut g = self.providers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((k, c)) = g.get(name).and_then(|s| s.client.as_ref()) {
            if *k == key {
                return Ok(c.clone());
            }
        }
        let c: Clients = (0..crate::threads::slots())
            .map(|_| build())
            .collect::<reqwest::Result<Vec<_>>>()?
            .into();
        if let Some(s) = g.get_mut(name) {
            s.client = Some((key, c.clone()));
        }
        Ok(c)
    }

    /// The state of `model` of `provider` (fresh breaker if its thresholds changed).
    pub fn model(
        &self,
        provider: &str,
        model: &str,
        breaker_config: BreakerConfig,
        latency_prior_ms: f64,
    ) -> ModelState {
        let mut g = self.models.lock().unwrap_or_else(|e| e.into_inner());
        let s = g
            .entry((provider.to_owned(), model.to_owned()))
            .or_insert_with(|| ModelState {
                latency: Arc::new(LatencyStats::new(latency_prior_ms)),
                breaker: Arc::new(Breaker::new(breaker_config, Instant::now())),
                deadlines: Arc::default(),
                measured: Arc::default(),
            });
        if s.breaker.config() != breaker_config {
            s.breaker = Arc::new(Breaker::new(breaker_config, Instant::now()));
        }
        let measured = self.measured.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(q) = measured.get(&(provider.to_owned(), model.to_owned())) {
            s.measured.set(*q);
        }
        s.clone()
    }

    /// Replaces every model's measured quality (by provider and model, per tier easiest
    /// first); models not in `by_model` become unmeasured, so a deleted run stops counting.
    pub fn apply_measured(&self, by_model: MeasuredByModel) {
        let models = self.models.lock().unwrap_or_else(|e| e.into_inner());
        for (k, state) in models.iter() {
            state
                .measured
                .set(by_model.get(k).copied().unwrap_or_default());
        }
        *self.measured.lock().unwrap_or_else(|e| e.into_inner()) = by_model;
    }

    /// Forgets every provider and model not named (called once a configuration is live).
    pub fn retain(&self, providers: &[&str], models: &[(&str, &str)]) {
        self.providers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|k, _| providers.contains(&k.as_str()));
        self.models
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(p, m), _| models.contains(&(p.as_str(), m.as_str())));
    }
}

/// No measurement (a bit pattern no score in [0, 1] has).
const UNMEASURED: u64 = u64::MAX;

/// One model's quality per complexity tier (easiest first) as `llm-gateway bench` measured it,
/// shared by every registry that holds the model, so a refresh reaches the live
/// configuration without rebuilding it.
#[derive(Debug)]
pub struct MeasuredQuality([AtomicU64; 4]);

impl Default for MeasuredQuality {
    fn default() -> Self {
        Self(std::array::from_fn(|_| AtomicU64::new(UNMEASURED)))
    }
}

impl MeasuredQuality {
    /// The measured quality of tier `tier` (0 = simple … 3 = reasoning), if measured.
    pub fn get(&self, tier: usize) -> Option<f64> {
        match self.0.get(tier)?.load(Ordering::Relaxed) {
            UNMEASURED => None,
            bits => Some(f64::from_bits(bits)),
        }
    }

    /// Sets every tier at once (`None`: not measured), clamped to [0, 1].
    pub fn set(&self, per_tier: [Option<f64>; 4]) {
        for (slot, q) in self.0.iter().zip(per_tier) {
            let bits = q.map_or(UNMEASURED, |q| q.clamp(0.0, 1.0).to_bits());
            slot.store(bits, Ordering::Relaxed);
        }
    }
}

fn new_limiter(max: Option<usize>) -> Arc<Limiter> {
    let l = Limiter::new(max);
    l.start_ticker();
    l
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measured_quality_is_kept_by_name_seeds_new_models_and_clears_when_gone() {
        let l = Learned::default();
        let b = BreakerConfig::default();
        let m = l.model("openai", "gpt-4o", b, 500.0).measured;
        assert!((0..4).all(|t| m.get(t).is_none()));
        let k = |p: &str, n: &str| (p.to_owned(), n.to_owned());
        l.apply_measured(HashMap::from([
            (
                k("openai", "gpt-4o"),
                [Some(0.5), None, Some(1.5), Some(0.0)],
            ),
            (k("groq", "llama"), [Some(0.25); 4]),
        ]));
        assert_eq!(
            (0..4).map(|t| m.get(t)).collect::<Vec<_>>(),
            [Some(0.5), None, Some(1.0), Some(0.0)]
        );
        // A model configured after the refresh starts with its measurement.
        assert_eq!(
            l.model("groq", "llama", b, 500.0).measured.get(3),
            Some(0.25)
        );
        l.apply_measured(HashMap::new());
        assert!((0..4).all(|t| m.get(t).is_none()));
    }

    #[tokio::test]
    async fn state_is_kept_by_name_and_renewed_when_its_settings_change() {
        crate::install_crypto();
        let l = Learned::default();
        let b = BreakerConfig::default();
        let a = l.provider("openai", b, None);
        assert!(Arc::ptr_eq(
            &a.breaker,
            &l.provider("openai", b, None).breaker
        ));
        let tighter = BreakerConfig {
            consecutive_failures: 2,
            ..b
        };
        let c = l.provider("openai", tighter, Some(8));
        assert!(!Arc::ptr_eq(&a.breaker, &c.breaker));
        assert!(!Arc::ptr_eq(&a.limiter, &c.limiter));

        let m = l.model("openai", "gpt-4o", b, 500.0);
        assert!(Arc::ptr_eq(
            &m.latency,
            &l.model("openai", "gpt-4o", b, 500.0).latency
        ));

        let built = std::sync::atomic::AtomicUsize::new(0);
        let build = || {
            built.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            crate::providers::transport::Client::new(
                &"http://127.0.0.1:1/".parse().unwrap(),
                crate::providers::transport::Settings {
                    connect: std::time::Duration::from_secs(1),
                    read_idle: std::time::Duration::from_secs(1),
                },
            )
        };
        l.client("openai", "k1".into(), build).unwrap();
        l.client("openai", "k1".into(), build).unwrap();
        l.client("openai", "k2".into(), build).unwrap();
        assert_eq!(built.load(std::sync::atomic::Ordering::Relaxed), 2);

        l.retain(&[], &[]);
        let fresh = l.provider("openai", tighter, Some(8));
        assert!(!Arc::ptr_eq(&c.breaker, &fresh.breaker), "forgotten");
    }
}
