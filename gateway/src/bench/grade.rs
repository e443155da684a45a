//! Deterministic graders: the same answer always gets the same score, in [0, 1].

use super::sandbox::{self, Sandbox};

/// How an answer is graded.
#[derive(Debug, Clone)]
pub enum Grader {
    /// The answer, lowercased and stripped of surrounding punctuation, is one of these.
    Exact(&'static [&'static str]),
    /// The trimmed answer matches this regular expression.
    Regex(&'static str),
    /// The last number in the answer is this one.
    Number(f64),
    /// Python code (the first fenced block, else the whole answer) passes these `assert`
    /// lines in the sandbox: the score is the share that pass.
    Python {
        /// One statement each.
        tests: &'static [&'static str],
    },
    /// A summary: the share of facts it keeps (a fact is kept if any of its forms appears,
    /// ignoring case), halved if it is longer than `max_words`.
    Facts {
        /// Each fact's accepted forms.
        facts: &'static [&'static [&'static str]],
        /// The length asked for.
        max_words: usize,
    },
    /// The share of these checks the answer passes.
    Checks(&'static [Check]),
}

/// One instruction-following check.
#[derive(Debug, Clone)]
pub enum Check {
    /// Exactly this many non-empty lines.
    Lines(usize),
    /// Every non-empty line starts so.
    EachLineStartsWith(&'static str),
    /// No non-empty line has more words.
    MaxWordsPerLine(usize),
    /// The answer (a fenced block's content, if fenced) is this JSON value.
    JsonEquals(&'static str),
    /// No uppercase letter.
    NoUppercase,
    /// This word appears (whole word, any case).
    ContainsWord(&'static str),
    /// This character does not appear.
    Lacks(char),
    /// The word count is in this range (inclusive).
    WordsBetween(usize, usize),
}

/// A grade with what explains it.
#[derive(Debug, Clone, PartialEq)]
pub struct Grade {
    /// In [0, 1].
    pub score: f64,
    /// What passed and what did not, for the report.
    pub detail: String,
    /// Why the answer could not be graded (no sandbox): the score then measures nothing.
    pub ungraded: Option<String>,
}

impl Grade {
    fn share(passed: usize, total: usize, detail: String) -> Grade {
        Grade {
            score: if total == 0 {
                0.0
            } else {
                passed as f64 / total as f64
            },
            detail,
            ungraded: None,
        }
    }
}

/// Grades `answer`.
pub async fn grade(grader: &Grader, answer: &str, sandbox: &Sandbox) -> Grade {
    let answer = answer.trim();
    match grader {
        Grader::Exact(accepted) => {
            let norm = answer
                .trim_matches(|c: char| !c.is_alphanumeric())
                .to_lowercase();
            let ok = accepted.iter().any(|a| *a == norm);
            Grade::share(ok as usize, 1, format!("answer `{}`", clip(answer)))
        }
        Grader::Regex(re) => {
            let ok = regex::Regex::new(re).is_ok_and(|r| r.is_match(answer));
            Grade::share(ok as usize, 1, format!("answer `{}`", clip(answer)))
        }
        Grader::Number(want) => {
            let got = last_number(answer);
            let ok = got.is_some_and(|g| (g - want).abs() < 1e-6);
            Grade::share(
                ok as usize,
                1,
                format!("last number {got:?}, expected {want}"),
            )
        }
        Grader::Python { tests } => {
            let code = fenced(answer).unwrap_or(answer);
            match sandbox.run_python(code, tests).await {
                Ok(r) => Grade::share(
                    r.passed,
                    tests.len(),
                    format!("{}/{} tests passed{}", r.passed, tests.len(), r.note()),
                ),
                Err(e) => Grade {
                    ungraded: Some(format!("the code could not be run: {e}")),
                    ..Grade::share(0, 1, String::new())
                },
            }
        }
        Grader::Facts { facts, max_words } => {
            let lower = answer.to_lowercase();
            let kept = facts
                .iter()
                .filter(|forms| forms.iter().any(|f| lower.contains(f)))
                .count();
            let words = answer.split_whitespace().count();
            let mut g = Grade::share(
                kept,
                facts.len(),
                format!("{kept}/{} facts, {words} words", facts.len()),
            );
            if words > *max_words {
                g.score /= 2.0;
                g.detail.push_str(&format!(" (over {max_words}: halved)"));
            }
            g
        }
        Grader::Checks(checks) => {
            let failed: Vec<String> = checks
                .iter()
                .filter(|c| !passes(c, answer))
                .map(|c| format!("{c:?}"))
                .collect();
            let detail = if failed.is_empty() {
                "all checks pass".to_owned()
            } else {
                format!("failed: {}", failed.join(", "))
            };
            Grade::share(checks.len() - failed.len(), checks.len(), detail)
        }
    }
}

fn passes(check: &Check, answer: &str) -> bool {
    let lines: Vec<&str> = answer
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let words = || answer.split_whitespace();
    match check {
        Check::Lines(n) => lines.len() == *n,
        Check::EachLineStartsWith(p) => !lines.is_empty() && lines.iter().all(|l| l.starts_with(p)),
        Check::MaxWordsPerLine(n) => lines.iter().all(|l| l.split_whitespace().count() <= *n),
        Check::JsonEquals(want) => {
            let text = fenced(answer).unwrap_or(answer);
            let got: Option<serde_json::Value> = serde_json::from_str(text.trim()).ok();
            let want: Option<serde_json::Value> = serde_json::from_str(want).ok();
            got.is_some() && got == want
        }
        Check::NoUppercase => !answer.chars().any(char::is_uppercase),
        Check::ContainsWord(w) => words().any(|x| {
            x.trim_matches(|c: char| !c.is_alphanumeric())
                .eq_ignore_ascii_case(w)
        }),
        Check::Lacks(c) => !answer.contains(*c),
        Check::WordsBetween(lo, hi) => (*lo..=*hi).contains(&words().count()),
    }
}

/// The content of the first fenced code block (``` or ```lang), if any.
pub fn fenced(text: &str) -> Option<&str> {
    let start = text.find("```")?;
    let after = &text[start + 3..];
    let body = &after[after.find('\n')? + 1..];
    Some(body.find("```").map_or(body, |end| &body[..end]))
}

/// The last number written in `text` (digits with an optional sign, decimal point and
/// thousands commas).
fn last_number(text: &str) -> Option<f64> {
    let re = regex::Regex::new(r"-?\d[\d,]*(?:\.\d+)?").ok()?;
    re.find_iter(text)
        .last()
        .and_then(|m| m.as_str().replace(',', "").parse().ok())
}

fn clip(s: &str) -> String {
    let one_line = s.replace('\n', " ");
    match one_line.char_indices().nth(60) {
        Some((i, _)) => format!("{}…", &one_line[..i]),
        None => one_line,
    }
}

impl sandbox::Outcome {
    fn note(&self) -> String {
        match &self.error {
            Some(e) => format!(" ({e})"),
            None => String::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn g(grader: Grader, answer: &str) -> f64 {
        grade(&grader, answer, &Sandbox::detect()).await.score
    }

    #[tokio::test]
    async fn short_answers_are_graded_by_form_not_by_luck() {
        assert_eq!(g(Grader::Exact(&["canberra"]), "Canberra.").await, 1.0);
        assert_eq!(g(Grader::Exact(&["canberra"]), "Sydney").await, 0.0);
        assert_eq!(
            g(Grader::Exact(&["canberra"]), "It is Canberra").await,
            0.0,
            "only the name was asked for"
        );
        let re = Grader::Regex(r"(?i)^\W*no\b");
        assert_eq!(g(re.clone(), "No. She plays poker.").await, 1.0);
        assert_eq!(g(re, "Not necessarily; yes.").await, 0.0);
        let n = Grader::Number(17.0);
        assert_eq!(
            g(n.clone(), "3 bags cost 12, plus 5 singles.\n17").await,
            1.0
        );
        assert_eq!(g(n.clone(), "The answer is 16 dollars").await, 0.0);
        assert_eq!(g(Grader::Number(4000.0), "about 4,000.").await, 1.0);
        assert_eq!(g(n, "no number here").await, 0.0);
    }

    #[tokio::test]
    async fn summaries_score_the_facts_kept_and_pay_for_length() {
        let facts = Grader::Facts {
            facts: &[&["march"], &["25 kg", "25 kilograms"]],
            max_words: 8,
        };
        assert_eq!(g(facts.clone(), "Ships in March, lifts 25 kg.").await, 1.0);
        assert_eq!(g(facts.clone(), "Ships in March.").await, 0.5);
        assert_eq!(
            g(
                facts,
                "It ships in March and it lifts 25 kilograms of goods."
            )
            .await,
            0.5
        );
    }

    #[tokio::test]
    async fn instruction_checks_count_each_constraint() {
        let bullets = Grader::Checks(&[
            Check::Lines(3),
            Check::EachLineStartsWith("- "),
            Check::MaxWordsPerLine(4),
        ]);
        assert_eq!(g(bullets.clone(), "- a b\n- c d\n\n- e f").await, 1.0);
        let two_of_three = g(bullets, "- a b\n- c d e f g h\n- e").await;
        assert!((two_of_three - 2.0 / 3.0).abs() < 1e-9);
        let json = Grader::Checks(&[Check::JsonEquals(r#"{"a": 1, "b": ["x"]}"#)]);
        assert_eq!(
            g(json.clone(), "```json\n{\"b\": [\"x\"], \"a\": 1}\n```").await,
            1.0
        );
        assert_eq!(g(json, "{\"a\": \"1\", \"b\": [\"x\"]}").await, 0.0);
        let sentence = Grader::Checks(&[
            Check::NoUppercase,
            Check::ContainsWord("blue"),
            Check::Lacks(','),
            Check::WordsBetween(3, 6),
        ]);
        assert_eq!(g(sentence.clone(), "the sea is blue.").await, 1.0);
        assert_eq!(g(sentence, "The sea, so Blue.").await, 0.5);
    }

    #[test]
    fn fenced_code_is_found_with_or_without_a_language() {
        assert_eq!(fenced("x\n```python\nprint(1)\n```\ny"), Some("print(1)\n"));
        assert_eq!(fenced("```\na\n```"), Some("a\n"));
        assert_eq!(fenced("no fence"), None);
    }
}
