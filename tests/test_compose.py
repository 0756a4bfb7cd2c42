"""extends: and sweep: expand into the stages a user expects, sharing everything upstream of a swept stage."""

from __future__ import annotations

import pytest
import yaml

from align.errors import AlignError
from align.recipe.compose import expand, merge, resolve_extends


def chain() -> dict:
    return {"name": "q", "seed": 0, "output_dir": "runs/q",
            "stages": {"sft": {"kind": "sft", "model": "m"},
                       "reward": {"kind": "reward", "model": "${stages.sft}"},
                       "ppo": {"kind": "ppo", "policy": "${stages.sft}", "reward": "${stages.reward}",
                               "args": {"kl_coef": 0.05}},
                       "dpo": {"kind": "dpo", "model": "${stages.sft}", "args": {"beta": 0.1}},
                       "eval": {"kind": "evaluate", "policies": {"sft": "${stages.sft}", "ppo": "${stages.ppo}",
                                                                 "dpo": "${stages.dpo}"}},
                       "report": {"kind": "report", "eval": "${stages.eval}"}}}


def test_merge_replaces_adds_and_deletes():
    base = {"a": {"x": 1, "y": [1, 2]}, "b": 2, "c": 3}
    assert merge(base, {"a": {"y": [3]}, "c": None, "d": 4}) == {"a": {"x": 1, "y": [3]}, "b": 2, "d": 4}
    assert base["c"] == 3  # the base is not modified


def test_extends_follows_relative_paths(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(chain(), sort_keys=False))
    child = {"extends": "../base.yaml", "name": "child", "stages": {"dpo": {"args": {"beta": 0.3}}, "report": None}}
    read = lambda p: yaml.safe_load(open(p))  # noqa: E731
    raw = resolve_extends(child, tmp_path / "sub" / "child.yaml", read)
    assert raw["name"] == "child" and raw["stages"]["dpo"]["args"]["beta"] == 0.3
    assert "report" not in raw["stages"] and list(raw["stages"])[:2] == ["sft", "reward"]
    with pytest.raises(AlignError, match="does not exist"):
        resolve_extends({"extends": "nope.yaml"}, tmp_path / "x.yaml", read)


def test_sweep_fans_out_the_swept_stages_and_the_evaluation():
    raw = {**chain(), "sweep": {"stages.ppo.args.kl_coef": [0.02, 0.2], "stages.dpo.args.beta": [0.05, 0.1, 0.3]}}
    [(tag, out)] = expand(raw)
    stages = out["stages"]
    assert tag is None
    assert list(stages) == ["sft", "reward", "ppo-kl_coef-0.02", "ppo-kl_coef-0.2", "dpo-beta-0.05", "dpo-beta-0.1",
                            "dpo-beta-0.3", "eval", "report"]  # sft and reward once, shared
    assert stages["ppo-kl_coef-0.2"]["args"]["kl_coef"] == 0.2 and stages["dpo-beta-0.3"]["args"]["beta"] == 0.3
    assert stages["eval"]["policies"] == {
        "sft": "${stages.sft}", "ppo-kl_coef-0.02": "${stages.ppo-kl_coef-0.02}",
        "ppo-kl_coef-0.2": "${stages.ppo-kl_coef-0.2}", "dpo-beta-0.05": "${stages.dpo-beta-0.05}",
        "dpo-beta-0.1": "${stages.dpo-beta-0.1}", "dpo-beta-0.3": "${stages.dpo-beta-0.3}"}


def test_a_stage_built_on_a_swept_stage_is_swept_with_it():
    raw = chain()
    raw["stages"]["reward"]["args"] = {"learning_rate": 1e-3}
    raw["sweep"] = {"stages.reward.args.learning_rate": [1e-3, 1e-4]}
    stages = expand(raw)[0][1]["stages"]
    assert stages["ppo-learning_rate-0.0001"]["reward"] == "${stages.reward-learning_rate-0.0001}"
    assert "dpo" in stages  # does not use the reward model: not swept


def test_seed_sweep_is_one_run_per_seed():
    runs = expand({**chain(), "sweep": {"seed": [0, 1]}})
    assert [tag for tag, _ in runs] == ["seed-0", "seed-1"]
    assert runs[1][1]["seed"] == 1 and runs[1][1]["output_dir"] == "runs/q/seed-1"


@pytest.mark.parametrize("sweep, message", [
    ({"stages.nope.args.x": [1]}, r"sweep\.stages\.nope\.args\.x: expected seed or stages\.<stage>"),
    ({"stages.ppo.args.kl_coef": []}, r"non-empty list"),
    ({"seed": ["a"]}, r"sweep\.seed: expected a list of integers"),
])
def test_bad_sweeps_name_the_key(sweep, message):
    with pytest.raises(AlignError, match=message):
        expand({**chain(), "sweep": sweep})


def test_a_judge_on_a_swept_stage_is_refused():
    raw = {**chain(), "judges": {"rm": {"reward_model": "${stages.reward}"}},
           "sweep": {"stages.reward.args.learning_rate": [1e-3, 1e-4]}}
    with pytest.raises(AlignError, match=r"judges\.rm: refers to reward"):
        expand(raw)


def test_a_sweep_runs_end_to_end_sharing_upstream_stages(tmp_path, capsys):
    """`align run` on a swept recipe: shared stages once, one stage per value, one evaluation of all, a verdict."""
    import json
    from pathlib import Path

    from align.cli import main

    recipe = Path(__file__).parent / "recipes" / "micro_sweep.yaml"
    assert main(["run", str(recipe), "--output-dir", str(tmp_path)]) == 0
    folders = sorted(p.name for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith("."))
    assert folders == sorted(["tokenizer", "pretrain", "sft", "preferences", "reward", "ppo-kl_coef-0.02",
                              "ppo-kl_coef-0.2", "dpo-beta-0.1", "dpo-beta-0.5", "eval", "report"])
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics["policies"]) == {"sft", "ppo-kl_coef-0.02", "ppo-kl_coef-0.2", "dpo-beta-0.1", "dpo-beta-0.5"}
    report = (tmp_path / "report" / "report.md").read_text()
    assert "Verdict: PPO vs DPO" in report and "PPO − DPO" in report
    out = capsys.readouterr().out
    assert "align: done: micro_sweep" in out and "dpo-beta-0.5" in out
    # a second run: every stage cached, shown as such
    assert main(["run", str(recipe), "--output-dir", str(tmp_path)]) == 0
    assert capsys.readouterr().out.count("cached") >= 11
