//! Trains the router's strong-need model (`gateway/src/router/strong_need.bin`) from a JSON
//! Lines file of `{"text", "target", "weight"}` samples. `e2e/routing/train.sh` writes that
//! file from the training half of RouteLLM's data and runs this.
//!
//! Usage: train_strong_need SAMPLES.jsonl OUT.bin

use std::io::BufRead;

use llm_gateway::router::strong_need::{Model, Sample, Training};

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [input, out] = args.as_slice() else {
        anyhow::bail!("usage: train_strong_need SAMPLES.jsonl OUT.bin");
    };
    let mut samples = Vec::new();
    for (n, line) in std::io::BufReader::new(std::fs::File::open(input)?)
        .lines()
        .enumerate()
    {
        let v: serde_json::Value = serde_json::from_str(&line?)?;
        let field = |k: &str| {
            v.get(k)
                .ok_or_else(|| anyhow::anyhow!("{input}:{}: no `{k}`", n + 1))
        };
        samples.push(Sample {
            text: field("text")?
                .as_str()
                .ok_or_else(|| anyhow::anyhow!("{input}:{}: `text` is not a string", n + 1))?
                .to_owned(),
            target: field("target")?.as_f64().unwrap_or(0.0).clamp(0.0, 1.0),
            weight: field("weight")?.as_f64().unwrap_or(1.0).max(0.0),
        });
    }
    let model = Model::train(&samples, Training::default());
    let bytes = model.encode();
    std::fs::write(out, &bytes)?;
    eprintln!(
        "trained on {} samples; wrote {} ({} KiB)",
        samples.len(),
        out,
        bytes.len() / 1024
    );
    Ok(())
}
