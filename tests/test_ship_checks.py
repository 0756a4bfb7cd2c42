"""The shipping keys' checks, without training: ``tracking:``, ``benchmarks:``, the export stage, PPO's push_to_hub,
run names under sweeps, and how a model reference is recognised as a Hub model."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from align.cli import main
from align.errors import AlignError
from align.recipe import load_recipe, load_recipes
from align.stages import stage_kind

REPO = Path(__file__).resolve().parents[1]
MICRO = REPO / "tests" / "recipes" / "micro.yaml"


def recipe_with(tmp_path, **top):
    raw = {**yaml.safe_load(MICRO.read_text()), **top, "output_dir": str(tmp_path / "run")}
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


@pytest.mark.parametrize("tracking, message", [
    ({"report_to": ["tensorbord"]}, r"tracking\.report_to: unknown tracker 'tensorbord'\. Did you mean 'tensorboard'\?"),
    ({"report_to": "trackio", "projekt": "x"}, r"tracking\.projekt: unknown key\. Did you mean 'project'\?"),
    ({"report_to": ["wandb"]}, r"tracking\.report_to: wandb is not installed here; pip install wandb"),
    ({"report_to": 3}, r"tracking\.report_to: expected a tracker name or a list"),
    ({"report_to": "trackio", "run_name": ["a"]}, r"tracking\.run_name: expected a string"),
    ("tensorboard", r"tracking: expected a mapping like"),
])
def test_a_wrong_tracking_key_is_named(tmp_path, tracking, message):
    with pytest.raises(AlignError, match=message):
        load_recipe(recipe_with(tmp_path, tracking=tracking))


def test_seed_sweeps_log_one_group_per_seed_under_one_folder(tmp_path):
    from align.tracking import Tracking

    recipes = load_recipes(REPO / "recipes" / "seeds.yaml", ["tracking={report_to: [trackio, tensorboard]}"],
                           output_dir=str(tmp_path / "seeds"))
    tracking = [Tracking(r) for r in recipes]
    assert [t.group for t in tracking] == [f"seeds-seed-{s}" for s in range(5)]
    assert {t.project for t in tracking} == {"seeds"} and {t.dir for t in tracking} == {tmp_path / "seeds" / "tensorboard"}
    assert tracking[1].run_name("ppo") == "seeds-seed-1/ppo"
    assert tracking[1].logdir("ppo") == tmp_path / "seeds" / "tensorboard" / "seeds-seed-1" / "ppo"
    assert tracking[0].trainer_args("sft") == {"report_to": "none", "run_name": "seeds-seed-0/sft", "project": "seeds"}
    assert not Tracking(load_recipe(REPO / "recipes" / "quickstart.yaml"))  # off unless asked


def test_a_stage_report_to_overrides_the_recipe(tmp_path):
    from accelerate import PartialState

    from align.stages.context import StageContext

    recipe = load_recipe(recipe_with(tmp_path, tracking={"report_to": ["tensorboard"]}),
                         ["stages.sft.args.report_to=none"])
    config = stage_kind("sft").config_class()
    own = StageContext(recipe, recipe.stages["sft"], PartialState(cpu=True)).config(config)
    tracked = StageContext(recipe, recipe.stages["pretrain"], PartialState(cpu=True)).config(
        stage_kind("pretrain").config_class())
    assert own.report_to == [] and own.run_name != "micro/sft"
    assert tracked.run_name == "micro/pretrain" and tracked.project == "micro"


def test_ppo_refuses_push_to_hub_and_names_align_export():
    problems = stage_kind("ppo").check({"policy": "x", "reward": "y", "args": {"push_to_hub": True}}, "stages.ppo")
    assert len(problems) == 1 and problems[0].startswith("stages.ppo.args.push_to_hub: the ppo stage does not push")
    assert "align export" in problems[0]


@pytest.mark.parametrize("value, message", [
    ({"tasks": []}, r"stages\.eval\.benchmarks\.tasks: expected a non-empty list"),
    ({"tasks": ["x"], "include_path": "/no/such/folder"}, r"benchmarks\.include_path: /no/such/folder is not a folder"),
    ({"tasks": ["x"], "limt": 3}, r"stages\.eval\.benchmarks\.limt: unknown key"),
    ({"tasks": ["x"], "limit": -1}, r"benchmarks\.limit: expected a non-negative number"),
    (3, r"stages\.eval\.benchmarks: expected a list of lm-eval task names"),
])
def test_a_wrong_benchmarks_key_is_named(value, message):
    problems = stage_kind("evaluate").check({"policies": {"a": "x"}, "benchmarks": value}, "stages.eval")
    assert len(problems) == 1 and __import__("re").search(message, problems[0]), problems


def test_an_unknown_lm_eval_task_is_named(tmp_path):
    from align.eval.benchmarks import options, task_manager

    spec = options({"tasks": ["review_mc", "no_such_task_xyz"], "include_path": str(REPO / "examples" / "lm_eval_tasks")},
                   "stages.eval.benchmarks")
    with pytest.raises(AlignError, match=r"stages\.eval\.benchmarks\.tasks: lm-eval knows no task 'no_such_task_xyz'"):
        task_manager(spec, "stages.eval.benchmarks")


def test_export_checks_its_dtype_and_its_input(tmp_path, capsys):
    assert stage_kind("export").check({"model": "x", "dtype": "int3"}, "stages.export") == [
        "stages.export.dtype: unknown dtype 'int3'; choose one of float32, bfloat16, float16, auto."]
    assert stage_kind("export").check({"model": "x", "dtype": "auto"}, "stages.export") == [
        "stages.export.dtype: an export saves one dtype; choose float32, bfloat16 or float16."]
    assert main(["export", str(tmp_path / "nothing"), str(tmp_path / "out")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["export", str(tmp_path / "empty"), str(tmp_path / "out")]) == 2
    assert "holds no model" in capsys.readouterr().err


def test_hub_models_are_recognised_by_id_or_cache_folder(tmp_path):
    from align.model_cards import hub_id_of
    from align.refs import StageRef

    snapshot = tmp_path / "hub" / "models--HuggingFaceTB--SmolLM2-135M-Instruct" / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    assert hub_id_of(str(snapshot)) == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert hub_id_of("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    assert hub_id_of(str(tmp_path)) is None  # a local folder
    assert hub_id_of(StageRef(str(tmp_path / "sft"), "sft")) is None and hub_id_of({"preset": "llama-tiny"}) is None
