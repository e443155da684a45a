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
    /// The HTTP client, and the settings it was built from.
    client: Option<(String, reqwest::Client)>,
}

/// One model's learned state.
#[derive(Debug, Clone)]
pub struct ModelState {
    /// Latency estimates.
    pub latency: Arc<LatencyStats>,
    /// The model's breaker.
    pub breaker: Arc<Breaker>,
    /// Learned first-content deadlines.
    pub deadlines: Arc<Deadlines>,
}

/// The learned state of every provider and model, by name.
#[derive(Debug, Default)]
pub struct Learned {
    providers: Mutex<HashMap<String, ProviderState>>,
    models: Mutex<HashMap<(String, String), ModelState>>,
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

    /// The HTTP client of provider `name` built from settings `key`: the old one if the key is
    /// the same (its pooled connections stay warm), else `build()`'s.
    pub fn client(
        &self,
        name: &str,
        key: String,
        build: impl FnOnce() -> reqwest::Result<reqwest::Client>,
    ) -> reqwest::Result<reqwest::Client> {
        let mut g = self.providers.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((k, c)) = g.get(name).and_then(|s| s.client.as_ref()) {
            if *k == key {
                return Ok(c.clone());
            }
        }
        let c = build()?;
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
            });
        if s.breaker.config() != breaker_config {
            s.breaker = Arc::new(Breaker::new(breaker_config, Instant::now()));
        }
        s.clone()
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

fn new_limiter(max: Option<usize>) -> Arc<Limiter> {
    let l = Limiter::new(max);
    l.start_ticker();
    l
}

#[cfg(test)]
mod tests {
    use super::*;

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
            reqwest::Client::builder().build()
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
