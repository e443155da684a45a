//! How long a model may take to start answering, learned from how long it usually takes.
//!
//! A provider that accepts a request and never answers must fail over in seconds, while a
//! reasoning model that normally thinks for 40 s keeps its 40 s. So every model keeps its
//! last [`WINDOW`] times to first content — a stream's first content chunk, or a
//! non-streaming answer (which arrives whole) — each less its prompt's prefill allowance.
//! Its deadline is [`FACTOR`] × their 99th percentile, clamped between [`FLOOR`] and the
//! configured value (`first_token_timeout_secs`), which also stands in until [`MIN_SAMPLES`]
//! answers have been seen. On top come allowances no history can know: the prompt's prefill
//! ([`PREFILL_PER_TOKEN`] a token) and, for a non-streaming answer, the output it may write
//! ([`DECODE_PER_TOKEN`] × `max_tokens`). Everything stays within the provider's total
//! timeout.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Answers remembered per model and mode.
pub const WINDOW: usize = 128;
/// Answers needed before the learned deadline replaces the configured one.
pub const MIN_SAMPLES: u64 = 20;
/// Deadline = this × the 99th percentile of recent times to first content.
pub const FACTOR: f64 = 3.0;
/// The shortest learned deadline (on top of the allowances): a fast model's occasional slow
/// answer, or a burst the gateway itself is slow to carry, must not fail over.
pub const FLOOR: Duration = Duration::from_secs(10);
/// Prefill time allowed per prompt token (5,000 tokens a second).
pub const PREFILL_PER_TOKEN: Duration = Duration::from_micros(200);
/// Generation time allowed per requested output token of a non-streaming answer (40 a second).
pub const DECODE_PER_TOKEN: Duration = Duration::from_millis(25);
/// Output assumed for a non-streaming request without `max_tokens`, before anything is learned.
pub const COLD_OUTPUT_GUESS: u32 = 512;
/// The configured value's default.
pub const DEFAULT_FIRST_TOKEN: Duration = Duration::from_secs(30);
/// The default for models tagged `reasoning` and for local (Ollama) models.
pub const DEFAULT_FIRST_TOKEN_SLOW: Duration = Duration::from_secs(180);

/// Which time is measured: a stream's first content, or a whole non-streaming answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Time to the first content or tool-call chunk.
    Stream,
    /// Time to a complete non-streaming answer.
    Json,
}

/// What one request brings to its deadline.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ask {
    /// Prompt tokens (an upper bound is fine).
    pub prompt_tokens: usize,
    /// The request's `max_tokens`, if any.
    pub max_output: Option<u32>,
}

/// The configured bounds of one model.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// `first_token_timeout_secs`: the cold value and the learned value's ceiling.
    pub configured: Duration,
    /// The provider's total timeout: nothing waits longer.
    pub total: Duration,
}

/// The learned part of one model's deadlines.
#[derive(Debug, Default)]
pub struct Deadlines {
    stream: Learned,
    json: Learned,
}

#[derive(Debug)]
struct Learned {
    ring: Mutex<Ring>,
    /// The 99th percentile in microseconds; `u64::MAX` until enough samples exist.
    q99_us: AtomicU64,
}

impl Default for Learned {
    fn default() -> Self {
        Self {
            ring: Mutex::new(Ring::default()),
            q99_us: AtomicU64::new(u64::MAX),
        }
    }
}

#[derive(Debug, Default)]
struct Ring {
    values_us: Vec<u64>,
    next: usize,
    seen: u64,
}

impl Ring {
    fn push(&mut self, v: u64) {
        if self.values_us.len() < WINDOW {
            self.values_us.push(v);
        } else {
            self.values_us[self.next] = v;
        }
        self.next = (self.next + 1) % WINDOW;
        self.seen += 1;
    }

    fn quantile(&self, q: f64) -> Option<u64> {
        if self.seen < MIN_SAMPLES || self.values_us.is_empty() {
            return None;
        }
        let mut v = self.values_us.clone();
        let i = ((v.len() - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
        let (_, x, _) = v.select_nth_unstable(i);
        Some(*x)
    }
}

/// The prefill allowance of a prompt of `tokens`.
pub fn prefill(tokens: usize) -> Duration {
    PREFILL_PER_TOKEN.saturating_mul(u32::try_from(tokens).unwrap_or(u32::MAX))
}

fn decode(tokens: u32) -> Duration {
    DECODE_PER_TOKEN.saturating_mul(tokens)
}

impl Deadlines {
    fn learned(&self, mode: Mode) -> &Learned {
        match mode {
            Mode::Stream => &self.stream,
            Mode::Json => &self.json,
        }
    }

    /// Records how long an answer took to start (`took`), for a prompt of `prompt_tokens`.
    pub fn observe(&self, mode: Mode, took: Duration, prompt_tokens: usize) {
        let v = took.saturating_sub(prefill(prompt_tokens)).as_micros();
        let l = self.learned(mode);
        let mut ring = l.ring.lock().unwrap_or_else(|e| e.into_inner());
        ring.push(u64::try_from(v).unwrap_or(u64::MAX));
        // Recomputed every few samples: a select over 128 values, off the common path.
        if ring.seen >= MIN_SAMPLES && ring.seen.is_multiple_of(4) {
            if let Some(q) = ring.quantile(0.99) {
                l.q99_us.store(q, Ordering::Relaxed);
            }
        }
    }

    /// The recent `q` quantile of times to first content (allowances excluded), once known.
    pub fn quantile(&self, mode: Mode, q: f64) -> Option<Duration> {
        let ring = self
            .learned(mode)
            .ring
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        ring.quantile(q).map(Duration::from_micros)
    }

    /// The learned deadline's base (before allowances), once enough samples exist.
    pub fn learned_base(&self, mode: Mode, b: Bounds) -> Option<Duration> {
        let q = self.learned(mode).q99_us.load(Ordering::Relaxed);
        (q != u64::MAX).then(|| {
            Duration::from_micros(q)
                .mul_f64(FACTOR)
                .clamp(FLOOR.min(b.configured), b.configured)
        })
    }

    /// How long this request may wait for the model to start answering.
    pub fn deadline(&self, mode: Mode, ask: Ask, b: Bounds) -> Duration {
        let body = match (mode, self.learned_base(mode, b)) {
            (Mode::Stream, Some(l)) => l,
            (Mode::Stream, None) => b.configured,
            // A non-streaming answer arrives once written. What was learned covers this
            // model's usual output; a larger `max_tokens` still gets its decode allowance.
            (Mode::Json, Some(l)) => l.max(ask.max_output.map_or(Duration::ZERO, decode)),
            (Mode::Json, None) => {
                b.configured + decode(ask.max_output.unwrap_or(COLD_OUTPUT_GUESS))
            }
        };
        (body + prefill(ask.prompt_tokens)).min(b.total)
    }
}

/// The configured first-content wait of a model: its own setting, else its provider's, else
/// [`DEFAULT_FIRST_TOKEN_SLOW`] for reasoning and local models and [`DEFAULT_FIRST_TOKEN`]
/// for the rest.
pub fn configured(
    model: Option<Duration>,
    provider: Option<Duration>,
    slow_by_nature: bool,
) -> Duration {
    model.or(provider).unwrap_or(if slow_by_nature {
        DEFAULT_FIRST_TOKEN_SLOW
    } else {
        DEFAULT_FIRST_TOKEN
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: Bounds = Bounds {
        configured: Duration::from_secs(30),
        total: Duration::from_secs(600),
    };

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn the_configured_value_stands_until_enough_answers_are_seen() {
        let d = Deadlines::default();
        let ask = Ask::default();
        assert_eq!(d.deadline(Mode::Stream, ask, B), B.configured);
        for _ in 0..MIN_SAMPLES - 1 {
            d.observe(Mode::Stream, ms(400), 0);
        }
        assert_eq!(d.deadline(Mode::Stream, ask, B), B.configured);
        for _ in 0..4 {
            d.observe(Mode::Stream, ms(400), 0);
        }
        // 3 × 400 ms is under the floor.
        assert_eq!(d.deadline(Mode::Stream, ask, B), FLOOR);
    }

    #[test]
    fn a_slow_thinker_keeps_its_time_and_a_fast_model_fails_over_in_seconds() {
        let thinker = Deadlines::default();
        let fast = Deadlines::default();
        for i in 0..64 {
            thinker.observe(Mode::Stream, ms(30_000 + i * 150), 0);
            fast.observe(Mode::Stream, ms(300 + i * 10), 0);
        }
        let slow_bounds = Bounds {
            configured: DEFAULT_FIRST_TOKEN_SLOW,
            ..B
        };
        let t = thinker.deadline(Mode::Stream, Ask::default(), slow_bounds);
        assert!(
            t >= Duration::from_secs(100) && t <= DEFAULT_FIRST_TOKEN_SLOW,
            "{t:?}"
        );
        let f = fast.deadline(Mode::Stream, Ask::default(), B);
        assert_eq!(f, FLOOR, "{f:?}");
    }

    #[test]
    fn long_prompts_and_requested_output_get_their_allowances() {
        let d = Deadlines::default();
        let long = Ask {
            prompt_tokens: 100_000,
            max_output: None,
        };
        assert_eq!(
            d.deadline(Mode::Stream, long, B),
            B.configured + Duration::from_secs(20)
        );
        let json = Ask {
            prompt_tokens: 0,
            max_output: Some(2000),
        };
        assert_eq!(
            d.deadline(Mode::Json, json, B),
            B.configured + Duration::from_secs(50)
        );
        for _ in 0..MIN_SAMPLES {
            d.observe(Mode::Json, ms(1000), 0);
        }
        assert_eq!(
            d.deadline(Mode::Json, json, B),
            Duration::from_secs(50),
            "learned 3 s, but 2000 tokens may take 50 s"
        );
        assert_eq!(
            d.deadline(Mode::Json, Ask::default(), B),
            FLOOR,
            "nothing asked beyond the usual"
        );
        let capped = Bounds {
            total: Duration::from_secs(10),
            ..B
        };
        assert_eq!(d.deadline(Mode::Json, json, capped), capped.total);
    }

    #[test]
    fn samples_are_measured_without_the_prompt_allowance() {
        let d = Deadlines::default();
        for _ in 0..MIN_SAMPLES {
            // 10 s for a 40k-token prompt is 2 s of thinking plus 8 s of prefill.
            d.observe(Mode::Stream, Duration::from_secs(10), 40_000);
        }
        assert_eq!(
            d.quantile(Mode::Stream, 0.5),
            Some(Duration::from_secs(2)),
            "prefill allowance removed"
        );
    }

    #[test]
    fn defaults_by_kind() {
        assert_eq!(configured(None, None, false), DEFAULT_FIRST_TOKEN);
        assert_eq!(configured(None, None, true), DEFAULT_FIRST_TOKEN_SLOW);
        assert_eq!(configured(None, Some(ms(5)), true), ms(5));
        assert_eq!(configured(Some(ms(7)), Some(ms(5)), false), ms(7));
    }
}
