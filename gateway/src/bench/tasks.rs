//! The 14 tasks: three each of knowledge, code, reasoning and instruction following, two of
//! summarization. Each names the complexity tier it measures, so routing can use a model's
//! score where the classifier puts a prompt: knowledge → simple, summarization and
//! instruction following → moderate, code → complex, reasoning → reasoning.
//!
//! Prompts ask for answers a program can grade without judgement: one word or number, code
//! that unit tests run, key facts a summary must keep, formats a check can verify.

use super::grade::{Check, Grader};
use crate::router::classifier::Tier;

/// What a task measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Category {
    /// Facts.
    Knowledge,
    /// Writing working code.
    Code,
    /// Keeping what matters, in fewer words.
    Summarization,
    /// Multi-step inference.
    Reasoning,
    /// Following format and content constraints.
    InstructionFollowing,
}

impl Category {
    /// Every category, in report order.
    pub const ALL: [Category; 5] = [
        Category::Knowledge,
        Category::Code,
        Category::Summarization,
        Category::Reasoning,
        Category::InstructionFollowing,
    ];

    /// Its name in the database and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Category::Knowledge => "knowledge",
            Category::Code => "code",
            Category::Summarization => "summarization",
            Category::Reasoning => "reasoning",
            Category::InstructionFollowing => "instruction_following",
        }
    }

    /// The complexity tier its tasks stand for.
    pub fn tier(self) -> Tier {
        match self {
            Category::Knowledge => Tier::Simple,
            Category::Summarization | Category::InstructionFollowing => Tier::Moderate,
            Category::Code => Tier::Complex,
            Category::Reasoning => Tier::Reasoning,
        }
    }
}

/// One benchmark task.
#[derive(Debug, Clone)]
pub struct Task {
    /// Stable id (stored with results).
    pub id: &'static str,
    /// What it measures.
    pub category: Category,
    /// The user message sent.
    pub prompt: &'static str,
    /// Completion limit.
    pub max_tokens: u32,
    /// How the answer is graded.
    pub grader: Grader,
}

/// The standard set.
pub fn all() -> Vec<Task> {
    use Category::*;
    let code = |id, prompt, tests| Task {
        id,
        category: Code,
        prompt,
        max_tokens: 600,
        grader: Grader::Python { tests },
    };
    vec![
        Task {
            id: "capital-australia",
            category: Knowledge,
            prompt: "What is the capital city of Australia? Answer with the city's name only.",
            max_tokens: 20,
            grader: Grader::Exact(&["canberra"]),
        },
        Task {
            id: "symbol-gold",
            category: Knowledge,
            prompt: "What is the chemical symbol of gold? Answer with the symbol only.",
            max_tokens: 10,
            grader: Grader::Exact(&["au"]),
        },
        Task {
            id: "author-origin-of-species",
            category: Knowledge,
            prompt: "Who wrote \"On the Origin of Species\" (1859)? Answer with the author's full name only.",
            max_tokens: 20,
            grader: Grader::Regex(r"(?i)^\W*charles\s+(robert\s+)?darwin\W*$"),
        },
        code(
            "code-palindrome",
            "Write a Python function `is_palindrome(s)` that returns True if the string reads the same forwards and backwards, ignoring case and every character that is not a letter or a digit, and False otherwise. Reply with only the code, in one ```python block.",
            &[
                "assert is_palindrome('A man, a plan, a canal: Panama') is True",
                "assert is_palindrome('race a car') is False",
                "assert is_palindrome('') is True",
                "assert is_palindrome('No lemon, no melon') is True",
                "assert is_palindrome('ab') is False",
            ],
        ),
        code(
            "code-merge-intervals",
            "Write a Python function `merge_intervals(intervals)` that takes a list of [start, end] pairs (integers, start <= end, in any order) and returns the list of merged, non-overlapping intervals sorted by start; intervals that touch (like [1, 2] and [2, 3]) merge. Reply with only the code, in one ```python block.",
            &[
                "assert merge_intervals([[1, 3], [2, 6], [8, 10], [15, 18]]) == [[1, 6], [8, 10], [15, 18]]",
                "assert merge_intervals([[1, 4], [4, 5]]) == [[1, 5]]",
                "assert merge_intervals([]) == []",
                "assert merge_intervals([[5, 7], [1, 2]]) == [[1, 2], [5, 7]]",
                "assert merge_intervals([[1, 10], [2, 3], [4, 5]]) == [[1, 10]]",
            ],
        ),
        code(
            "code-roman",
            "Write a Python function `roman_to_int(s)` that converts a Roman numeral (I, V, X, L, C, D, M, with subtractive forms such as IV and CM) between 1 and 3999 to an integer. Reply with only the code, in one ```python block.",
            &[
                "assert roman_to_int('III') == 3",
                "assert roman_to_int('LVIII') == 58",
                "assert roman_to_int('MCMXCIV') == 1994",
                "assert roman_to_int('IX') == 9",
                "assert roman_to_int('MMMCMXCIX') == 3999",
            ],
        ),
        Task {
            id: "summary-product-launch",
            category: Summarization,
            prompt: "Summarize the following in at most 40 words.\n\nNorthwind Robotics announced on Tuesday that its warehouse robot, the Stacker 3, will ship in March to customers in Germany and Japan. The company said the robot lifts up to 25 kilograms, which is twice the load of the previous model, and runs for ten hours on one charge. Northwind expects to sell 4,000 units in the first year. Its chief executive, Dana Ruiz, said a version for cold-storage warehouses is planned for 2027. Shares rose 6 percent after the announcement.",
            max_tokens: 120,
            grader: Grader::Facts {
                facts: &[
                    &["northwind"],
                    &["stacker 3", "stacker3"],
                    &["march"],
                    &["25 kilograms", "25 kg", "25kg", "twice"],
                    &["4,000", "4000", "four thousand"],
                ],
                max_words: 40,
            },
        },
        Task {
            id: "summary-meeting",
            category: Summarization,
            prompt: "Summarize the decisions of this meeting in at most 35 words.\n\nThe team discussed whether to move the public launch. Priya reported that the payment integration still fails in two of nine test countries. After debate, the team decided to delay the launch from 3 June to 17 June. Marco will own the payment fix and report progress every Friday. The marketing budget stays at 120,000 euros. Someone asked about the office move, but that was postponed to the next meeting.",
            max_tokens: 100,
            grader: Grader::Facts {
                facts: &[
                    &["17 june", "june 17", "17th of june", "june 17th"],
                    &["delay", "postpone", "moved", "pushed"],
                    &["marco"],
                    &["payment"],
                    &["120,000", "120000", "120k", "120 000"],
                ],
                max_words: 35,
            },
        },
        Task {
            id: "reasoning-apples",
            category: Reasoning,
            prompt: "A shop sells apples in bags of 6 for 4 dollars and single apples for 1 dollar each. What is the least amount of money, in dollars, needed to buy exactly 23 apples? Think it through, then give the final answer as a number on the last line.",
            max_tokens: 400,
            grader: Grader::Number(17.0),
        },
        Task {
            id: "reasoning-syllogism",
            category: Reasoning,
            prompt: "Every member of the chess club also plays go. Nobody who plays go plays poker. Lena plays poker. Is Lena a member of the chess club? Answer with yes or no, then one sentence of justification.",
            max_tokens: 120,
            grader: Grader::Regex(r"(?i)^\W*no\b"),
        },
        Task {
            id: "reasoning-sequence",
            category: Reasoning,
            prompt: "What is the next number in the sequence 2, 6, 12, 20, 30, 42? Think it through, then give the final answer as a number on the last line.",
            max_tokens: 300,
            grader: Grader::Number(56.0),
        },
        Task {
            id: "if-three-bullets",
            category: InstructionFollowing,
            prompt: "Give exactly three tips for sleeping better. Format: three lines, each starting with \"- \", each at most 12 words, and nothing else.",
            max_tokens: 120,
            grader: Grader::Checks(&[
                Check::Lines(3),
                Check::EachLineStartsWith("- "),
                Check::MaxWordsPerLine(13),
            ]),
        },
        Task {
            id: "if-json",
            category: InstructionFollowing,
            prompt: "Output only a JSON object, with no other text, describing a person named Ada who is 36 years old and speaks English and French: keys \"name\" (string), \"age\" (integer) and \"languages\" (array of strings, in that order).",
            max_tokens: 80,
            grader: Grader::Checks(&[Check::JsonEquals(
                r#"{"name": "Ada", "age": 36, "languages": ["English", "French"]}"#,
            )]),
        },
        Task {
            id: "if-lowercase-sentence",
            category: InstructionFollowing,
            prompt: "Write one sentence about the ocean that uses only lowercase letters, contains the word \"blue\", has no commas, and is between 8 and 20 words long.",
            max_tokens: 60,
            grader: Grader::Checks(&[
                Check::NoUppercase,
                Check::ContainsWord("blue"),
                Check::Lacks(','),
                Check::WordsBetween(8, 20),
            ]),
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    const CODE_FORMAT: &str = "Reply with only the code, in one ```python block.";

    #[test]
    fn fourteen_tasks_at_least_two_per_category_with_unique_ids() {
        let tasks = all();
        assert_eq!(tasks.len(), 14);
        for c in Category::ALL {
            assert!(
                tasks.iter().filter(|t| t.category == c).count() >= 2,
                "{c:?}"
            );
        }
        let mut ids: Vec<_> = tasks.iter().map(|t| t.id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), 14);
        assert!(tasks
            .iter()
            .filter(|t| t.category == Category::Code)
            .all(|t| t.prompt.ends_with(CODE_FORMAT)));
    }
}
