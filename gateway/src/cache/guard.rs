//! The false-hit guard: what cosine similarity cannot see. Two prompts may be near in meaning
//! as a whole and still ask different things: a negation, a number or its unit, a named
//! entity, the polarity of an action ("enable" and "disable" embed almost alike). A semantic
//! hit needs the two prompts' [`Signature`]s to agree:
//!
//! - the same numbers, each with the unit that follows it (`5 km` ≠ `50 km` ≠ `5 miles`;
//!   number words count: `five` = `5`);
//! - negated, or not, alike;
//! - the same polar actions and qualities (enable/disable, increase/decrease, add/remove,
//!   min/max, before/after, …; synonyms of one pole agree: enable = activate = turn on);
//! - every named entity of one (a capitalised word not opening a sentence, an acronym, a
//!   token mixing letters and digits) present in the other (`Austria` ≠ `Australia`);
//! - no direction reversed (`string to integer` ≠ `integer to string`).

use std::collections::BTreeSet;

/// What must agree between two prompts for a semantic hit.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Signature {
    quantities: Vec<(String, String)>,
    negated: bool,
    poles: BTreeSet<(&'static str, bool)>,
    entities: BTreeSet<String>,
    words: BTreeSet<String>,
    /// `x to y` / `x into y` / `from x to y`: the content words either side of a direction.
    directions: Vec<(String, String)>,
}

const FILLERS: &[&str] = &["a", "an", "the", "my", "your", "this", "that", "some"];

const NEGATIONS: &[&str] = &[
    "not", "no", "never", "none", "nothing", "nobody", "neither", "nor", "without", "cannot",
    "cant", "dont", "doesnt", "didnt", "isnt", "arent", "wasnt", "werent", "wont", "shouldnt",
    "wouldnt", "couldnt", "havent", "hasnt", "hadnt", "mustnt",
];

/// Words that name one pole of an opposition: (word, concept, positive pole?).
const POLES: &[(&str, &str, bool)] = &[
    ("enable", "enable", true),
    ("enabled", "enable", true),
    ("enabling", "enable", true),
    ("activate", "enable", true),
    ("activated", "enable", true),
    ("disable", "enable", false),
    ("disabled", "enable", false),
    ("disabling", "enable", false),
    ("deactivate", "enable", false),
    ("deactivated", "enable", false),
    ("increase", "increase", true),
    ("increasing", "increase", true),
    ("raise", "increase", true),
    ("grow", "increase", true),
    ("boost", "increase", true),
    ("decrease", "increase", false),
    ("decreasing", "increase", false),
    ("reduce", "increase", false),
    ("lower", "increase", false),
    ("shrink", "increase", false),
    ("cut", "increase", false),
    ("add", "add", true),
    ("adding", "add", true),
    ("insert", "add", true),
    ("append", "add", true),
    ("remove", "add", false),
    ("removing", "add", false),
    ("delete", "add", false),
    ("deleting", "add", false),
    ("drop", "add", false),
    ("buy", "buy", true),
    ("buying", "buy", true),
    ("purchase", "buy", true),
    ("sell", "buy", false),
    ("selling", "buy", false),
    ("upload", "upload", true),
    ("download", "upload", false),
    ("import", "import", true),
    ("export", "import", false),
    ("encrypt", "encrypt", true),
    ("encryption", "encrypt", true),
    ("decrypt", "encrypt", false),
    ("decryption", "encrypt", false),
    ("compress", "compress", true),
    ("decompress", "compress", false),
    ("zip", "compress", true),
    ("unzip", "compress", false),
    ("install", "install", true),
    ("uninstall", "install", false),
    ("lock", "lock", true),
    ("unlock", "lock", false),
    ("start", "start", true),
    ("begin", "start", true),
    ("stop", "start", false),
    ("end", "start", false),
    ("halt", "start", false),
    ("open", "open", true),
    ("close", "open", false),
    ("min", "max", false),
    ("minimum", "max", false),
    ("smallest", "max", false),
    ("lowest", "max", false),
    ("least", "max", false),
    ("shortest", "max", false),
    ("max", "max", true),
    ("maximum", "max", true),
    ("largest", "max", true),
    ("biggest", "max", true),
    ("highest", "max", true),
    ("most", "max", true),
    ("longest", "max", true),
    ("before", "before", true),
    ("after", "before", false),
    ("above", "above", true),
    ("below", "above", false),
    ("more", "more", true),
    ("less", "more", false),
    ("fewer", "more", false),
    ("higher", "more", true),
    ("greater", "more", true),
    ("larger", "more", true),
    ("smaller", "more", false),
    ("first", "first", true),
    ("last", "first", false),
    ("ascending", "ascending", true),
    ("descending", "ascending", false),
    ("true", "true", true),
    ("false", "true", false),
    ("hot", "hot", true),
    ("cold", "hot", false),
    ("fast", "fast", true),
    ("faster", "fast", true),
    ("slow", "fast", false),
    ("slower", "fast", false),
    ("advantages", "pros", true),
    ("pros", "pros", true),
    ("benefits", "pros", true),
    ("disadvantages", "pros", false),
    ("cons", "pros", false),
    ("drawbacks", "pros", false),
    ("import", "import", true),
    ("push", "push", true),
    ("pull", "push", false),
    ("merge", "merge", true),
    ("split", "merge", false),
    ("encode", "encode", true),
    ("decode", "encode", false),
    ("serialize", "serialize", true),
    ("deserialize", "serialize", false),
    ("uppercase", "uppercase", true),
    ("lowercase", "uppercase", false),
    ("left", "left", true),
    ("right", "left", false),
    ("north", "north", true),
    ("south", "north", false),
    ("east", "east", true),
    ("west", "east", false),
    ("win", "win", true),
    ("lose", "win", false),
    ("accept", "accept", true),
    ("reject", "accept", false),
    ("allow", "allow", true),
    ("deny", "allow", false),
    ("block", "allow", false),
    ("public", "public", true),
    ("private", "public", false),
    ("input", "input", true),
    ("output", "input", false),
];

/// Units, mapped to one name each.
const UNITS: &[(&str, &str)] = &[
    ("km", "km"),
    ("kilometer", "km"),
    ("kilometers", "km"),
    ("kilometre", "km"),
    ("kilometres", "km"),
    ("mile", "mi"),
    ("miles", "mi"),
    ("mi", "mi"),
    ("m", "m"),
    ("meter", "m"),
    ("meters", "m"),
    ("metre", "m"),
    ("metres", "m"),
    ("cm", "cm"),
    ("centimeters", "cm"),
    ("mm", "mm"),
    ("ft", "ft"),
    ("foot", "ft"),
    ("feet", "ft"),
    ("inch", "in"),
    ("inches", "in"),
    ("yard", "yd"),
    ("yards", "yd"),
    ("kg", "kg"),
    ("kilogram", "kg"),
    ("kilograms", "kg"),
    ("g", "g"),
    ("gram", "g"),
    ("grams", "g"),
    ("lb", "lb"),
    ("lbs", "lb"),
    ("pound", "lb"),
    ("pounds", "lb"),
    ("oz", "oz"),
    ("ounce", "oz"),
    ("ounces", "oz"),
    ("l", "l"),
    ("liter", "l"),
    ("liters", "l"),
    ("litre", "l"),
    ("litres", "l"),
    ("ml", "ml"),
    ("gallon", "gal"),
    ("gallons", "gal"),
    ("c", "c"),
    ("celsius", "c"),
    ("f", "f"),
    ("fahrenheit", "f"),
    ("kelvin", "k"),
    ("usd", "usd"),
    ("dollar", "usd"),
    ("dollars", "usd"),
    ("eur", "eur"),
    ("euro", "eur"),
    ("euros", "eur"),
    ("gbp", "gbp"),
    ("yen", "jpy"),
    ("jpy", "jpy"),
    ("second", "s"),
    ("seconds", "s"),
    ("sec", "s"),
    ("secs", "s"),
    ("minute", "min"),
    ("minutes", "min"),
    ("mins", "min"),
    ("hour", "h"),
    ("hours", "h"),
    ("hrs", "h"),
    ("day", "d"),
    ("days", "d"),
    ("week", "wk"),
    ("weeks", "wk"),
    ("month", "mo"),
    ("months", "mo"),
    ("year", "yr"),
    ("years", "yr"),
    ("kb", "kb"),
    ("mb", "mb"),
    ("gb", "gb"),
    ("tb", "tb"),
    ("byte", "b"),
    ("bytes", "b"),
    ("bit", "bit"),
    ("bits", "bit"),
    ("percent", "%"),
    ("%", "%"),
];

const NUMBER_WORDS: &[(&str, &str)] = &[
    ("zero", "0"),
    ("one", "1"),
    ("two", "2"),
    ("three", "3"),
    ("four", "4"),
    ("five", "5"),
    ("six", "6"),
    ("seven", "7"),
    ("eight", "8"),
    ("nine", "9"),
    ("ten", "10"),
    ("eleven", "11"),
    ("twelve", "12"),
    ("twenty", "20"),
    ("thirty", "30"),
    ("fifty", "50"),
    ("hundred", "100"),
    ("thousand", "1000"),
    ("million", "1000000"),
    ("billion", "1000000000"),
    ("dozen", "12"),
    ("half", "0.5"),
];

fn lookup<'a>(table: &'a [(&str, &'a str)], w: &str) -> Option<&'a str> {
    table.iter().find(|(k, _)| *k == w).map(|(_, v)| *v)
}

/// Splits into words (letters, digits, `.` inside numbers, `%`), keeping the original case
/// and whether each word opens a sentence.
fn words(text: &str) -> Vec<(String, bool)> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut sentence_start = true;
    let mut cur_starts = true;
    let chars: Vec<char> = text.chars().collect();
    for (i, &c) in chars.iter().enumerate() {
        let keep = c.is_alphanumeric()
            || c == '%'
            || (c == '.'
                && !cur.is_empty()
                && cur.chars().all(|d| d.is_ascii_digit())
                && chars.get(i + 1).is_some_and(char::is_ascii_digit))
            || (c == '\'' && !cur.is_empty() && chars.get(i + 1).is_some_and(|n| *n == 't'));
        if keep {
            if cur.is_empty() {
                cur_starts = sentence_start;
            }
            if c != '\'' {
                cur.push(c);
            }
        } else {
            if !cur.is_empty() {
                out.push((std::mem::take(&mut cur), cur_starts));
                sentence_start = false;
            }
            if matches!(c, '.' | '?' | '!' | '\n' | ':' | ';') {
                sentence_start = true;
            }
        }
    }
    if !cur.is_empty() {
        out.push((cur, cur_starts));
    }
    out
}

/// Splits `5km` into `5` and `km`.
fn split_number_unit(w: &str) -> Option<(&str, &str)> {
    let i = w.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
    (i > 0).then(|| (&w[..i], &w[i..]))
}

impl Signature {
    /// The signature of a prompt.
    pub fn of(text: &str) -> Signature {
        let mut s = Signature::default();
        let ws = words(text);
        let lower: Vec<String> = ws.iter().map(|(w, _)| w.to_lowercase()).collect();
        let mut i = 0;
        while i < ws.len() {
            let (orig, starts) = &ws[i];
            let w = lower[i].as_str();
            s.words.insert(w.to_owned());
            let number = if w.chars().all(|c| c.is_ascii_digit() || c == '.')
                && w.chars().next().is_some_and(|c| c.is_ascii_digit())
            {
                Some((w.to_owned(), None))
            } else if let Some((n, u)) = split_number_unit(w) {
                Some((n.to_owned(), lookup(UNITS, u)))
            } else {
                lookup(NUMBER_WORDS, w).map(|n| (n.to_owned(), None))
            };
            if let Some((n, unit)) = number {
                let unit = unit.or_else(|| lower.get(i + 1).and_then(|u| lookup(UNITS, u)));
                let n = n.trim_end_matches('.').to_owned();
                s.quantities.push((n, unit.unwrap_or("").to_owned()));
            } else if NEGATIONS.contains(&w) {
                s.negated = true;
            } else if w == "on" || w == "off" {
                // Only as a switch ("turn on", "switched off"): elsewhere "on" is a preposition.
                let switch = i > 0
                    && matches!(
                        lower[i - 1].as_str(),
                        "turn"
                            | "turned"
                            | "turning"
                            | "switch"
                            | "switched"
                            | "switching"
                            | "toggle"
                    );
                if switch {
                    s.poles.insert(("enable", w == "on"));
                }
            } else if let Some((_, concept, pos)) = POLES.iter().find(|(k, ..)| *k == w) {
                s.poles.insert((concept, *pos));
            }
            let is_entity = orig.len() > 1
                && ((!starts && orig.chars().next().is_some_and(char::is_uppercase))
                    || (orig
                        .chars()
                        .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
                        && orig.chars().any(|c| c.is_ascii_uppercase())
                        && orig.len() <= 6
                        && orig != "I")
                    || (orig.chars().any(|c| c.is_ascii_digit())
                        && orig.chars().any(char::is_alphabetic)
                        && split_number_unit(w).is_none_or(|(_, u)| lookup(UNITS, u).is_none())));
            if is_entity {
                s.entities.insert(w.to_owned());
            }
            if matches!(w, "to" | "into") && i > 0 {
                let before = lower[..i]
                    .iter()
                    .rev()
                    .find(|x| !FILLERS.contains(&x.as_str()));
                let after = lower[i + 1..]
                    .iter()
                    .find(|x| !FILLERS.contains(&x.as_str()));
                if let (Some(b), Some(a)) = (before, after) {
                    s.directions.push((b.clone(), a.clone()));
                }
            }
            i += 1;
        }
        s
    }

    /// Whether a cached prompt with signature `other` may answer this one.
    pub fn agrees(&self, other: &Signature) -> bool {
        let mut a = self.quantities.clone();
        let mut b = other.quantities.clone();
        a.sort();
        b.sort();
        a == b
            && self.negated == other.negated
            && self.poles == other.poles
            && self.entities.iter().all(|e| other.words.contains(e))
            && other.entities.iter().all(|e| self.words.contains(e))
            && !self
                .directions
                .iter()
                .any(|(x, y)| other.directions.iter().any(|(a, b)| a == y && b == x))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agree(a: &str, b: &str) -> bool {
        Signature::of(a).agrees(&Signature::of(b))
    }

    #[test]
    fn the_issue_examples_never_agree() {
        assert!(!agree(
            "enable 2FA on my account",
            "disable 2FA on my account"
        ));
        assert!(!agree("convert 5 km to miles", "convert 50 km to miles"));
        assert!(!agree(
            "What is the capital of Austria?",
            "What is the capital of Australia?"
        ));
        assert!(!agree("convert 5 km to miles", "convert 5 miles to km"));
        assert!(!agree("Is Rust memory safe?", "Is Rust not memory safe?"));
        assert!(!agree(
            "How do I convert a string to an integer in Java?",
            "How do I convert an integer to a string in Java?"
        ));
    }

    #[test]
    fn paraphrases_agree() {
        assert!(agree("How do I turn on 2FA?", "How can I enable 2FA?"));
        assert!(agree(
            "convert 5 km to miles",
            "How many miles are five kilometers?"
        ));
        assert!(agree(
            "what's the capital of france",
            "What is France's capital city?"
        ));
        assert!(agree(
            "Explain how a hash map works.",
            "How does a hashmap work? Explain."
        ));
        assert!(agree(
            "Why isn't my build working?",
            "Why doesn't my build work?"
        ));
    }
}
