"""Bad recipes and bad data give one clear paragraph and exit code 2, never a traceback."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from align.cli import main

REPO = Path(__file__).resolve().parents[1]
MICRO = REPO / "tests" / "recipes" / "micro.yaml"


def write_recipe(tmp_path, change=None, name="recipe.yaml") -> Path:
    raw = yaml.safe_load(MICRO.read_text())
    raw["output_dir"] = str(tmp_path / "run")
    if change:
        change(raw)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def run_cli(argv, capsys) -> tuple[int, str]:
    code = main(argv)
    err = capsys.readouterr().err
    return code, err


def jsonl(path: Path, rows) -> str:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return str(path)


def test_validate_prints_the_stage_graph(tmp_path, capsys):
    assert main(["validate", str(write_recipe(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "valid recipe 'micro' with 3 stages" in out and "sft: sft (after pretrain)" in out


@pytest.mark.parametrize("argv_fn, message", [
    (lambda p: ["validate", str(p.parent / "missing.yaml")], "does not exist"),
    (lambda p: ["validate", str(p), "--set", "stages.sft.lora.r"], "expected dotted.key=value"),
    (lambda p: ["validate", str(p), "--set", "stages.sfx.args.x=1"], "Did you mean 'sft'"),
    (lambda p: ["run", str(p), "--only", "sfx"], "no stage named 'sfx'"),
    (lambda p: ["run", str(p), "--only", "sft"], "needs pretrain to have finished"),
    (lambda p: ["validate", str(p), "--set", "stages.sft.args.num_train_epoch=2"], "stages.sft.args.num_train_epoch: not a field of SFTConfig"),
])
def test_command_line_mistakes(tmp_path, capsys, argv_fn, message):
    code, err = run_cli(argv_fn(write_recipe(tmp_path)), capsys)
    assert code == 2
    assert message in err and "Traceback" not in err


def test_invalid_yaml(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nstages: [unclosed\n")
    code, err = run_cli(["validate", str(path)], capsys)
    assert code == 2 and "not valid YAML" in err


@pytest.mark.parametrize("rows, message", [
    ([{"messages": [{"role": "assistant", "content": "hi"}, {"role": "user", "content": "yo"}]}], "row 0"),
    ([{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]}], "row 0"),
    ([{"text": "a plain text row"}], "sft"),
])
def test_bad_sft_data_fails_before_anything_trains_with_the_row(tmp_path, capsys, rows, message):
    """`align run` checks every stage's data first: minutes of pretraining are not spent before sft refuses it."""
    data = jsonl(tmp_path / "chat.jsonl", rows)

    def change(raw):
        raw["datasets"]["chat"] = {"path": data}
        raw["stages"] = {k: raw["stages"][k] for k in ("tokenizer", "pretrain", "sft")}
        raw["stages"]["pretrain"]["args"]["max_steps"] = 2
    recipe = write_recipe(tmp_path, change)
    code, err = run_cli(["run", str(recipe)], capsys)
    assert code == 2 and "Traceback" not in err
    assert "stages.sft.dataset (chat)" in err and message in err
    assert not (tmp_path / "run").exists()  # nothing ran


def test_missing_data_file_is_named(tmp_path, capsys):
    recipe = write_recipe(tmp_path, lambda r: r["datasets"].update(corpus={"path": str(tmp_path / "nope.txt")}))
    code, err = run_cli(["run", str(recipe)], capsys)
    assert code == 2 and "nope.txt" in err and "Traceback" not in err


def test_unknown_builtin_split(tmp_path, capsys):
    recipe = write_recipe(tmp_path, lambda r: r["datasets"]["corpus"].update(split="pretrian"))
    code, err = run_cli(["run", str(recipe)], capsys)
    assert code == 2 and "pretrian" in err and "Traceback" not in err


def test_bad_model_preset(tmp_path, capsys):
    recipe = write_recipe(tmp_path, lambda r: r["stages"]["pretrain"].update(model={"preset": "llama-huge"}))
    code, err = run_cli(["run", str(recipe)], capsys)
    assert code == 2 and "stages.pretrain.model.preset" in err and "llama-tiny" in err


def test_bad_lora_field(tmp_path, capsys):
    recipe = write_recipe(tmp_path, lambda r: r["stages"]["pretrain"]["args"].update(max_steps=2)
                          or r["stages"]["sft"].update(lora={"rank": 4}))
    code, err = run_cli(["run", str(recipe)], capsys)
    assert code == 2 and "stages.sft.lora" in err and "Traceback" not in err


def test_subprocess_exit_code_and_no_traceback(tmp_path):
    recipe = write_recipe(tmp_path, lambda r: r["stages"]["sft"].update(kind="sftt"))
    proc = subprocess.run([sys.executable, "-m", "align", "validate", str(recipe)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "stages.sft.kind: unknown stage kind 'sftt'" in proc.stderr and "Traceback" not in proc.stderr


def test_validate_prints_nothing_from_the_libraries():
    """As a new user runs it: the console script, no flags; only align's own lines (and --verbose restores them)."""
    import subprocess
    import sys
    from pathlib import Path

    align = Path(sys.executable).parent / "align"
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "quickstart.yaml"
    done = subprocess.run([str(align), "validate", str(recipe)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert all(line.startswith((str(recipe), "  ", "checked:", "not checked:", "validated in"))
               for line in done.stdout.splitlines()), done.stdout


def test_reward_stage_with_too_few_pairs_names_the_dataset(tmp_path, capsys, tiny_model_dir):
    """One pair cannot be split into training and held-out pairs: a clear error, not datasets' ValueError."""
    pairs = jsonl(tmp_path / "pairs.jsonl", [{"prompt": "the cat", "chosen": " sat", "rejected": " ran"}])
    recipe = tmp_path / "reward.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "few", "output_dir": str(tmp_path / "run"), "datasets": {"prefs": {"path": pairs}},
        "stages": {"reward": {"kind": "reward", "model": str(tiny_model_dir), "dataset": "prefs"}}}))
    code, err = run_cli(["run", str(recipe)], capsys)
    assert code == 2 and "Traceback" not in err
    assert "stages.reward.dataset: 1 preference pair(s)" in err and "eval_dataset" in err


def test_held_out_pairs_keeps_at_least_one_on_each_side():
    from datasets import Dataset

    from align.errors import AlignError
    from align.stages.reward import held_out_pairs

    pairs = Dataset.from_dict({"chosen": [str(i) for i in range(10)], "rejected": ["x"] * 10})
    train, held = held_out_pairs(pairs, 0.1, 0, where="stages.reward")
    assert (len(train), len(held)) == (9, 1)
    assert [len(s) for s in held_out_pairs(pairs.select(range(2)), 0.1, 0, where="stages.reward")] == [1, 1]
    for fraction, n, message in [(1.5, 10, "stages.reward.eval_fraction"), (0.5, 1, "leaves none to train on")]:
        with pytest.raises(AlignError, match=message):
            held_out_pairs(pairs.select(range(n)), fraction, 0, where="stages.reward")
