//! Evaluates the complexity classifier on the labelled prompts in
//! `e2e/classifier/prompts.jsonl`: prints accuracy and the confusion matrix, fails below the
//! documented floor.

use llm_gateway::router::classifier::{classify, Tier};
use llm_gateway::wire::ChatRequest;
use serde_json::Value;

/// The documented accuracy floor on the labelled set the thresholds were tuned on.
const FLOOR: f64 = 0.85;
/// The documented floor on the held-out set, written after tuning and never tuned on.
const HOLDOUT_FLOOR: f64 = 0.75;

#[test]
fn classifier_accuracy_on_the_labelled_set() {
    let acc = evaluate("prompts.jsonl", FLOOR);
    let held = evaluate("prompts-holdout.jsonl", HOLDOUT_FLOOR);
    println!(
        "\nsummary: tuning set {:.1}%, held-out set {:.1}%",
        acc * 100.0,
        held * 100.0
    );
}

fn evaluate(file: &str, floor: f64) -> f64 {
    let path = format!("{}/../e2e/classifier/{file}", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(path).unwrap();
    let mut matrix = [[0usize; 4]; 4];
    let mut misses = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let row: Value = serde_json::from_str(line).unwrap();
        let want = Tier::parse(row["tier"].as_str().unwrap()).expect("known tier");
        let mut body = serde_json::json!({"model": "auto", "messages": row["messages"]});
        if let Some(tools) = row.get("tools") {
            body["tools"] = tools.clone();
        }
        let req: ChatRequest = serde_json::from_value(body).unwrap();
        let got = classify(&req).tier;
        let idx = |t: Tier| Tier::ALL.iter().position(|x| *x == t).unwrap();
        matrix[idx(want)][idx(got)] += 1;
        if got != want {
            let first = row["messages"].as_array().unwrap().last().unwrap()["content"]
                .as_str()
                .unwrap_or("");
            misses.push(format!(
                "  want {:<9} got {:<9} {}",
                want.as_str(),
                got.as_str(),
                first
                    .chars()
                    .take(90)
                    .collect::<String>()
                    .replace('\n', " ")
            ));
        }
    }
    let total: usize = matrix.iter().flatten().sum();
    let right: usize = (0..4).map(|i| matrix[i][i]).sum();
    let accuracy = right as f64 / total as f64;
    println!(
        "\n{file}: classifier accuracy {right}/{total} = {:.1}% (floor {:.0}%)",
        accuracy * 100.0,
        floor * 100.0
    );
    println!("confusion matrix (rows: label, columns: predicted)");
    println!(
        "{:>10} {:>8} {:>8} {:>8} {:>9}",
        "", "simple", "moderate", "complex", "reasoning"
    );
    for (i, t) in Tier::ALL.iter().enumerate() {
        println!(
            "{:>10} {:>8} {:>8} {:>8} {:>9}",
            t.as_str(),
            matrix[i][0],
            matrix[i][1],
            matrix[i][2],
            matrix[i][3]
        );
    }
    println!("misclassified:\n{}", misses.join("\n"));
    if file == "prompts.jsonl" {
        assert!(
            total >= 200,
            "the labelled set must hold at least 200 prompts, has {total}"
        );
    }
    assert!(
        accuracy >= floor,
        "{file}: accuracy {accuracy:.3} is below the floor {floor}"
    );
    accuracy
}
