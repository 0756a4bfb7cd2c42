"""recipes/hub.yaml end to end, with the Hub swapped for replicas and local files by --set, as a user without
network (or CI) would: SmolLM2's replica as the model, UltraFeedback-shaped pairs through convert: ultrafeedback,
a Qwen2.5 replica as the LLM judge."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from align.cli import main
from align.testing import ultrafeedback_rows

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]



def test_hub_recipe_on_replicas(hub_replica, tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)  # the local lm-eval task names its data file from the repository's root
    prefs = tmp_path / "prefs.jsonl"
    prefs.write_text("".join(json.dumps(r) + "\n" for r in ultrafeedback_rows(24)))
    recipe = str(REPO / "recipes" / "hub.yaml")
    small = {"per_device_train_batch_size": 8, "max_length": 192}
    sets = [
        f"stages.sft.model={hub_replica('smollm2')}",
        f"judges.judge.llm={hub_replica('qwen2_5')}",
        "datasets.chat={builtin: reviews, split: sft, limit: 24}",
        f"datasets.prefs={{path: {prefs}, convert: ultrafeedback}}",
        "datasets.prompts={builtin: reviews, split: prompts, limit: 8}",
        "datasets.eval_prompts={builtin: reviews, split: eval_prompts, limit: 6}",
        f"stages.sft.args={json.dumps({**small, 'max_steps': 3})}",
        f"stages.reward.args={json.dumps({**small, 'max_steps': 2})}",
        f"stages.dpo.args={json.dumps({**small, 'max_steps': 2})}",
        "stages.ppo.args={max_steps: 2, rollout_batch_size: 4, num_mini_batches: 1, ppo_epochs: 1, "
        "per_device_train_batch_size: 4, max_new_tokens: 8, eval_steps: 1, eval_prompts: 4, save_steps: 100}",
        "stages.eval.generation={max_new_tokens: 8, batch_size: 8}",
        "stages.eval.n_bootstrap=50",
        # trackio would write into the user's $HF_HOME from this process: tensorboard's files land in the run folder
        "tracking.report_to=[tensorboard]",
        "stages.eval.benchmarks={tasks: [review_mc], include_path: examples/lm_eval_tasks, limit: 4}",
    ]
    args = [arg for s in sets for arg in ("--set", s)] + ["--output-dir", str(tmp_path / "run")]
    assert main(["validate", recipe, *args]) == 0
    assert main(["run", recipe, *args]) == 0
    metrics = json.loads((tmp_path / "run" / "eval" / "metrics.json").read_text())
    assert set(metrics["policies"]) == {"sft", "ppo", "dpo"}
    assert metrics["primary_judge"] == "judge" and metrics["decoding"]["max_new_tokens"] == 8
    for name in ("ppo", "dpo"):
        assert 0.0 <= metrics["policies"][name]["win_rate"]["win_rate"] <= 1.0
        assert metrics["policies"][name]["kl"] is not None
    assert (tmp_path / "run" / "report" / "report.html").exists()
    # SmolLM2's own chat template (with its default system prompt) travelled through every stage
    saved = json.loads((tmp_path / "run" / "dpo" / "tokenizer_config.json").read_text())
    template = saved.get("chat_template") or (tmp_path / "run" / "dpo" / "chat_template.jinja").read_text()
    assert "SmolLM" in template
    # shipped: the stages logged to tensorboard, lm-eval ran on every policy, the DPO policy exported with its card
    assert {p.name for p in (tmp_path / "run" / "tensorboard" / "hub").iterdir()} >= {"sft", "reward", "ppo", "dpo", "eval"}
    assert all("review_mc/acc" in metrics["policies"][name]["benchmarks"] for name in ("sft", "ppo", "dpo"))
    assert (tmp_path / "run" / "ppo" / "merged" / "model.safetensors").exists()  # merge: true on the ppo stage
    export = tmp_path / "run" / "export"
    assert json.loads((export / "config.json").read_text())["dtype"] == "bfloat16"
    card = (export / "README.md").read_text()
    assert "tags:" in card and "- dpo" in card and "trl-lib/Capybara" not in card  # the data came from local files
    report = (tmp_path / "run" / "report" / "report.md").read_text()
    assert f"Exported model (export): `{export}`" in report and "tensorboard" in report
