"""The routing evaluation's arithmetic and loaders (e2e/routing/routellm_eval.py): the curve's
ends are the weak and strong models, an oracle ranking recovers the gap early, a ranking that
carries no information scores about 0.5, and contaminated prompts are dropped as RouteLLM does."""

import json
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "routing"))
import routellm_eval as ev  # noqa: E402


def synthetic(n=2000, seed=1):
    rng = np.random.default_rng(seed)
    weak = (rng.random(n) < 0.65).astype(float)
    strong = np.where(weak == 1, (rng.random(n) < 0.9), (rng.random(n) < 0.6)).astype(float)
    return weak, strong


def test_the_curve_runs_from_the_weak_model_to_the_strong_one():
    weak, strong = synthetic()
    acc = ev.curve(np.arange(len(weak), dtype=float), weak, strong, np.random.default_rng(0))
    assert acc[0] == weak.mean()
    assert acc[-1] == strong.mean()


def test_an_oracle_ranking_recovers_the_gap_early_and_noise_scores_one_half():
    weak, strong = synthetic()
    rng = np.random.default_rng(0)
    oracle = ev.curve(strong - weak, weak, strong, rng)
    apgr, cpt50, cpt80 = ev.metrics(oracle, weak.mean(), strong.mean(), len(weak))
    gain = ((strong == 1) & (weak == 0)).mean()
    assert apgr > 1.0  # the weak model is sometimes right where the strong one is not
    assert cpt50 < 100 * gain and cpt80 < 100 * gain + 10
    noise = ev.curve(rng.random(len(weak)), weak, strong, rng)
    apgr, cpt50, cpt80 = ev.metrics(noise, weak.mean(), strong.mean(), len(weak))
    assert abs(apgr - 0.5) < 0.05, apgr
    assert 40 < cpt50 < 60 and 70 < cpt80 < 90, (cpt50, cpt80)


def test_contaminated_prompts_are_dropped(tmp_path: pathlib.Path):
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "gsm8k_responses.csv").write_text(
        f"prompt,{ev.WEAK},{ev.STRONG},{ev.WEAK}_response,{ev.STRONG}_response\n"
        '"How many eggs?\nTwo lines.",False,True,a,b\n'
        "Seen in training,True,True,a,b\n"
    )
    (tmp_path / "gsm8k" / "contaminated_prompts.jsonl").write_text(
        json.dumps({"train_prompt": "x", "eval_prompt": "Seen in training", "train_idx": 0, "eval_idx": 1}) + "\n"
    )
    assert ev.load_gsm8k(str(tmp_path)) == [("How many eggs?\nTwo lines.", 0.0, 1.0)]


def test_training_export_holds_only_the_half_the_evaluation_never_reads(tmp_path: pathlib.Path):
    prompts = [f"prompt number {i}" for i in range(400)]
    sets = {
        "MMLU": [(p, 0.0, 1.0) for p in prompts[:300]],
        "GSM8K": [(p, 1.0, 1.0) for p in prompts[300:375]],
        "MT-Bench": [(p, 5.0, 8.0) for p in prompts[375:]],
    }
    out = tmp_path / "train.jsonl"
    ev.export_train(sets, str(out))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    exported = {r["text"] for r in rows}
    assert exported and not any(ev.held_out(p) for p in exported)
    assert exported | {p for p in prompts if ev.held_out(p)} == set(prompts)
    by = lambda p: next(r for r in rows if r["text"] == p)  # noqa: E731
    mmlu = next(p for p in prompts[:300] if p in exported)
    gsm = next(p for p in prompts[300:375] if p in exported)
    mt = next(p for p in prompts[375:] if p in exported)
    assert by(mmlu)["target"] == 1.0 and by(gsm)["target"] == 0.0 and by(mt)["target"] == 1.0
    # Smaller benchmarks weigh more per prompt, the largest weighs 1.
    assert by(mmlu)["weight"] == 1.0 < by(gsm)["weight"] < by(mt)["weight"]
