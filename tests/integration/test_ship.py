"""Shipping what a run trained, read back as a user would: the trackers' own stores (trackio's local database,
tensorboard's event files), the model cards' text and metadata, the exported folder's greedy tokens against the
stage's own model, lm-eval's numbers in metrics.json and the report, and what a Hub push would upload."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from align.cli import main

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
PROMPTS = ["Write a review of the Zenmor X2 blender.", "What do you think of the Torfe Plus water bottle?"]


def offline_env(**extra) -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **extra}


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """tests/recipes/micro_ship.yaml run by the CLI in its own process (trackio's folder is read from the environment
    when trackio is imported): tracking on, dpo merged, lm-eval in evaluate, ppo exported, the report."""
    root = tmp_path_factory.mktemp("ship")
    env = offline_env(TRACKIO_DIR=str(root / "trackio"))
    done = subprocess.run([sys.executable, "-m", "align", "run", "tests/recipes/micro_ship.yaml", "--output-dir",
                           str(root / "run")], cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return root / "run", root / "trackio", env


def greedy_tokens(model, tokenizer, n: int = 12) -> list[list[int]]:
    """Greedy continuations of chat prompts under one explicit decoding (no checkpoint setting applies)."""
    from transformers import GenerationConfig

    eos = tokenizer.eos_token_id
    config = GenerationConfig(do_sample=False, max_new_tokens=n, eos_token_id=eos,
                              pad_token_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos)
    out = []
    for prompt in PROMPTS:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)
        with torch.no_grad():
            generated = model.eval().generate(**ids, generation_config=config)
        out.append(generated[0, ids["input_ids"].shape[1]:].tolist())
    return out


def trackio_read(trackio_dir: Path, env: dict, project: str) -> dict:
    """Every run of ``project`` in trackio's local store, through trackio's own reader: {run: {group, logs}}."""
    code = ("import json, sys\nfrom trackio.sqlite_storage import SQLiteStorage\n"
            f"runs = SQLiteStorage.get_runs({project!r})\n"
            f"print(json.dumps({{r: {{'config': SQLiteStorage.get_run_config({project!r}, r), "
            f"'logs': SQLiteStorage.get_logs({project!r}, r)}} for r in runs}}, default=str))")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_trackio_store_holds_every_stage_and_the_evaluation_table(shipped):
    run, trackio_dir, env = shipped
    runs = trackio_read(trackio_dir, env, "align-ship-test")
    for stage in ("pretrain", "sft", "reward", "dpo", "ppo", "eval", "ship_report"):
        assert f"micro_ship/{stage}" in runs, sorted(runs)
        assert runs[f"micro_ship/{stage}"]["config"]["_Group"] == "micro_ship"
    keys = lambda name: {k for row in runs[f"micro_ship/{name}"]["logs"] for k in row}  # noqa: E731
    assert "train/loss" in keys("sft") and "train/rewards/accuracies" in keys("dpo")
    assert {"train/objective/kl", "train/objective/scores"} <= keys("ppo")  # PPO through the same callbacks
    logs = runs["micro_ship/eval"]["logs"]
    table = next(row["eval/table"] for row in logs if "eval/table" in row)["_value"]
    metrics = json.loads((run / "eval" / "metrics.json").read_text())["policies"]
    assert [r["policy"] for r in table] == ["sft", "ppo", "dpo", "grpo"]
    for row in table:
        assert row["win_rate"] == pytest.approx(metrics[row["policy"]]["win_rate"]["win_rate"])
        assert row["kl"] == pytest.approx(metrics[row["policy"]]["kl"])
        assert row["perplexity"] == pytest.approx(metrics[row["policy"]]["perplexity"])
        assert row["review_mc/acc"] == pytest.approx(metrics[row["policy"]]["benchmarks"]["review_mc/acc"])
    scalars = {k: v for row in logs for k, v in row.items()}
    assert scalars["eval/dpo/gold"] == pytest.approx(metrics["dpo"]["scores"]["gold"])
    figures = {k for row in runs["micro_ship/ship_report"]["logs"] for k in row}
    assert {"ship_report/reward_vs_kl", "ship_report/win_rates"} <= figures


def test_tensorboard_event_files_hold_the_stage_metrics_and_the_table(shipped):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _, _ = shipped
    board = run / "tensorboard" / "micro_ship"

    def read(stage):
        acc = EventAccumulator(str(board / stage), size_guidance={"tensors": 0, "scalars": 0, "images": 0})
        acc.Reload()
        return acc

    sft = read("sft")
    losses = [e.value for e in sft.Scalars("train/loss")]
    assert len(losses) >= 2 and all(v > 0 for v in losses)
    assert "train/objective/kl" in read("ppo").Tags()["scalars"]
    evaluation = read("eval")
    metrics = json.loads((run / "eval" / "metrics.json").read_text())["policies"]
    assert evaluation.Scalars("eval/ppo/win_rate")[0].value == pytest.approx(metrics["ppo"]["win_rate"]["win_rate"])
    text = evaluation.Tensors("eval/table/text_summary")[0].tensor_proto.string_val[0].decode()
    assert text.startswith("| policy | gold | rm | win_rate") and "| dpo |" in text and "review_mc/acc" in text
    assert "ship_report/reward_vs_kl" in read("ship_report").Tags()["images"]


def test_cards_carry_lineage_metadata_and_the_evaluation(shipped):
    from huggingface_hub import ModelCard

    run, _, _ = shipped
    dpo = ModelCard.load(run / "dpo" / "README.md")
    assert dpo.data.library_name == "peft" and {"align", "dpo", "trl"} <= set(dpo.data.tags)
    assert dpo.data.pipeline_tag == "text-generation"
    text = dpo.text
    lineage = [text.index(f"- **{s}** ({k})") for s, k in (("tokenizer", "tokenizer"), ("pretrain", "pretrain"),
                                                           ("sft", "sft"), ("preferences", "preferences"), ("dpo", "dpo"))]
    assert lineage == sorted(lineage)  # base -> SFT data -> preference data -> method, in order
    assert "`chat`: rows 64; format conversational" in text and "data card `dpo/data_card_preferences.md`" in text
    assert '"max_steps": 4' in text and '"r": 4' in text  # the method's own args and LoRA
    wr = json.loads((run / "eval" / "metrics.json").read_text())["policies"]["dpo"]["win_rate"]
    assert f"win rate vs sft (gold judge) {wr['win_rate']:.3f}" in text and "review_mc/acc" in text
    assert "AutoPeftModelForCausalLM" in text
    merged = ModelCard.load(run / "dpo" / "merged" / "README.md")
    assert merged.data.library_name == "transformers" and "AutoModelForCausalLM" in merged.text
    ppo = ModelCard.load(run / "ppo" / "README.md")
    assert {"ppo", "rlhf"} <= set(ppo.data.tags) and "- **reward** (reward)" in ppo.text
    reward = ModelCard.load(run / "reward" / "README.md")
    assert reward.data.pipeline_tag == "text-classification"
    assert not (run / "eval" / "README.md").exists()  # no model, no card


def test_merged_policy_and_export_stage_give_the_stage_models_greedy_tokens(shipped):
    from peft import AutoPeftModelForCausalLM
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run, _, _ = shipped
    tokenizer = AutoTokenizer.from_pretrained(run / "dpo")
    for stage in ("dpo", "grpo"):  # merge: true on a TRL policy stage: the adapter merged into its base
        own = greedy_tokens(AutoPeftModelForCausalLM.from_pretrained(run / stage), tokenizer)
        assert greedy_tokens(AutoModelForCausalLM.from_pretrained(run / stage / "merged"), tokenizer) == own, stage

    export = run / "export"
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "README.md"} <= \
        {p.name for p in export.iterdir()}
    exported_tok = AutoTokenizer.from_pretrained(export)
    assert exported_tok.chat_template == AutoTokenizer.from_pretrained(run / "ppo").chat_template
    stage = greedy_tokens(AutoPeftModelForCausalLM.from_pretrained(run / "ppo"), tokenizer)
    assert greedy_tokens(AutoModelForCausalLM.from_pretrained(export), exported_tok) == stage
    decoding = json.loads((run / "eval" / "metrics.json").read_text())["decoding"]
    generation = json.loads((export / "generation_config.json").read_text())
    assert generation["max_new_tokens"] == decoding["max_new_tokens"] == 24
    assert generation["do_sample"] is True and generation["temperature"] == 1.0 and generation["top_k"] == 0
    assert tokenizer.eos_token_id in generation["eos_token_id"]


def test_benchmarks_reach_metrics_and_the_report(shipped):
    from align.eval.benchmarks import model_args

    run, _, _ = shipped
    # ppo is a LoRA adapter (lm-eval loads its base with peft=), dpo and grpo were merged, sft's merged/ is its model
    assert model_args(run / "ppo")["peft"] == str((run / "ppo").resolve())
    assert model_args(run / "ppo")["pretrained"] == str((run / "sft" / "merged").resolve())
    assert "peft" not in model_args(run / "dpo")
    policies = json.loads((run / "eval" / "metrics.json").read_text())["policies"]
    for name in ("sft", "ppo", "dpo", "grpo"):
        bench = policies[name]["benchmarks"]
        assert 0.0 <= bench["review_mc/acc"] <= 1.0 and bench["review_mc/acc_stderr"] > 0
        assert bench["review_mc/acc"] * 12 == pytest.approx(round(bench["review_mc/acc"] * 12))  # 12 items
    report = (run / "ship_report" / "report.md").read_text()
    assert "### Benchmarks" in report and "review_mc/acc" in report
    assert f"{policies['dpo']['benchmarks']['review_mc/acc']:.3f} ±" in report
    assert "Tracking: trackio project `align-ship-test`, group `micro_ship`" in report
    assert f"Exported model (export): `{run / 'export'}`" in report


def test_align_export_merges_casts_and_pushes_up_to_the_upload(shipped, tmp_path, monkeypatch, capsys):
    from huggingface_hub import HfApi, ModelCard
    from transformers import AutoModelForCausalLM

    run, _, _ = shipped
    assert main(["export", str(run / "ppo"), str(tmp_path / "adapter")]) == 2  # a local base cannot be pushed
    err = capsys.readouterr().err
    assert "a LoRA adapter on" in err and "a local folder" in err and "--merge" in err
    calls = {}

    def create_repo(self, repo_id, **kwargs):
        calls["create"] = (repo_id, kwargs)

    def upload_folder(self, *, folder_path, repo_id, **kwargs):
        calls["upload"] = (repo_id, sorted(p.name for p in Path(folder_path).iterdir()), kwargs)
        calls["card"] = ModelCard.load(Path(folder_path) / "README.md")
        return "https://huggingface.co/me/micro-ppo/commit/0"

    monkeypatch.setattr(HfApi, "create_repo", create_repo)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    out = tmp_path / "ppo-bf16"
    assert main(["export", str(run / "ppo"), str(out), "--merge", "--dtype", "bf16", "--push-to-hub", "me/micro-ppo",
                 "--private"]) == 0
    assert calls["create"] == ("me/micro-ppo", {"repo_type": "model", "private": True, "exist_ok": True})
    repo, files, kwargs = calls["upload"]
    assert repo == "me/micro-ppo" and kwargs["ignore_patterns"] == [".*"]
    assert {"model.safetensors", "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            "chat_template.jinja", "README.md"} <= set(files)
    card = calls["card"]
    assert card.data.library_name == "transformers" and {"align", "ppo"} <= set(card.data.tags)
    assert 'AutoModelForCausalLM.from_pretrained("me/micro-ppo")' in card.text and "bfloat16" in card.text
    assert AutoModelForCausalLM.from_pretrained(out).dtype == torch.bfloat16


@pytest.mark.parametrize("family", ["smollm2", "qwen2_5"])
def test_replica_from_the_hub_cache_exports_an_adapter_naming_its_hub_base(family, tmp_path, capsys):
    """A base from the Hub (a cache snapshot folder) is named by its Hub id in the exported adapter and the card,
    and both exports (adapter on that base, merged) give the SFT stage's greedy tokens."""
    from huggingface_hub import ModelCard
    from peft import AutoPeftModelForCausalLM, PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from align.testing import FAMILIES, build_replica

    hub_id = FAMILIES[family].hub_id
    snapshot = build_replica(family, tmp_path / "hub" / f"models--{hub_id.replace('/', '--')}" / "snapshots" / "0a1b2c")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"name: replica\noutput_dir: {tmp_path / 'run'}\ndatasets:\n"
                      f"  chat: {{builtin: reviews, split: sft, limit: 16}}\nstages:\n"
                      f"  sft: {{kind: sft, model: {snapshot}, dataset: chat, lora: {{r: 4, lora_alpha: 8}}, merge: false,\n"
                      f"        args: {{max_steps: 2, per_device_train_batch_size: 8, max_length: 128, learning_rate: 0.01}}}}\n")
    assert main(["run", str(recipe)]) == 0
    stage = tmp_path / "run" / "sft"
    tokenizer = AutoTokenizer.from_pretrained(stage)
    own = greedy_tokens(AutoPeftModelForCausalLM.from_pretrained(stage), tokenizer)
    card = ModelCard.load(stage / "README.md")
    assert card.data.base_model == hub_id and card.data.base_model_relation == "adapter"

    assert main(["export", str(stage), str(tmp_path / "adapter")]) == 0
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert config["base_model_name_or_path"] == hub_id
    assert ModelCard.load(tmp_path / "adapter" / "README.md").data.base_model == hub_id
    adapter = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(snapshot, dtype=torch.float32),
                                        tmp_path / "adapter")
    assert greedy_tokens(adapter, AutoTokenizer.from_pretrained(tmp_path / "adapter")) == own

    assert main(["export", str(stage), str(tmp_path / "merged"), "--merge"]) == 0
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert greedy_tokens(merged, AutoTokenizer.from_pretrained(tmp_path / "merged")) == own
    shipped_config = json.loads((snapshot / "config.json").read_text())
    exported_config = json.loads((tmp_path / "merged" / "config.json").read_text())
    assert exported_config["model_type"] == shipped_config["model_type"]
    assert ModelCard.load(tmp_path / "merged" / "README.md").data.base_model == hub_id


def test_a_reward_model_exports_as_a_classifier_with_the_same_scores(shipped, tmp_path):
    from huggingface_hub import ModelCard
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    run, _, _ = shipped
    assert main(["export", str(run / "reward"), str(tmp_path / "rm")]) == 0
    assert not (tmp_path / "rm" / "generation_config.json").exists()
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "rm")
    batch = tokenizer(PROMPTS, return_tensors="pt", padding=True)
    with torch.no_grad():
        scores = [AutoModelForSequenceClassification.from_pretrained(folder).eval()(**batch).logits
                  for folder in (run / "reward", tmp_path / "rm")]
    assert torch.equal(scores[0], scores[1])
    card = ModelCard.load(tmp_path / "rm" / "README.md")
    assert card.data.pipeline_tag == "text-classification" and "AutoModelForSequenceClassification" in card.text
