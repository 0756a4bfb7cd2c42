"""`align validate` is a dry run: each mistake a run would meet before training is caught, named and
collected (all of them), and the plan says which stages are cached and which will run."""

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from align.cli import main

REPO = Path(__file__).resolve().parents[1]
MICRO = REPO / "tests" / "recipes" / "micro.yaml"
U = lambda text: {"role": "user", "content": text}  # noqa: E731
A = lambda text: {"role": "assistant", "content": text}  # noqa: E731


# judges the recipes below name as f"{__name__}:<function>"
def good_judge(prompts, responses):
    return [float(len(r)) for r in responses]


def short_judge(prompts, responses):
    return [1.0]


def word_judge(prompts, responses):
    return ["good" for _ in responses]


def nan_judge(prompts, responses):
    return [math.nan for _ in responses]


def broken_judge(prompts, responses):
    raise KeyError("score")


def write_recipe(tmp_path, change=None) -> Path:
    raw = yaml.safe_load(MICRO.read_text())
    raw["output_dir"] = str(tmp_path / "run")
    if change:
        change(raw)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def jsonl(path: Path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def validate(path, capsys, *extra) -> tuple[int, str, str]:
    code = main(["validate", str(path), *extra])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def with_judge(spec, *, stage=True):
    """Add a judge (and a preferences stage using it, so it is called on a prompt of the recipe's data)."""
    def change(raw):
        raw["datasets"]["prompts"] = {"builtin": "reviews", "split": "prompts", "size": 8}
        raw["judges"] = {"j": spec}
        if stage:
            raw["stages"]["preferences"] = {"kind": "preferences", "policy": "${stages.sft}", "dataset": "prompts",
                                            "judge": "j"}
    return change


def test_micro_recipe_is_clean_and_the_plan_says_what_runs(tmp_path, capsys):
    code, out, err = validate(write_recipe(tmp_path, with_judge({"function": f"{__name__}:good_judge"})), capsys)
    assert code == 0, err
    assert "valid recipe 'micro' with 4 stages" in out
    assert "tokenizer: tokenizer: will run (new)" in out and "sft: sft (after pretrain): will run (new)" in out
    assert "stages.sft.dataset (chat): 64 rows, conversational; every row valid" in out
    assert f"judges.j: {__name__}:good_judge gave one number per response" in out
    assert "the first prompt stages.preferences reads" in out
    assert err == ""


def test_quickstart_passes_quickly(tmp_path):
    """A fresh process, as a user runs it: imports included (the target is under 10 s; measured, not asserted).
    Into an empty output folder, so a finished runs/quickstart beside the repo (CI runs the quickstart first) does
    not turn the plan into cached stages."""
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "align", "validate", "recipes/quickstart.yaml",
                           "--output-dir", str(tmp_path / "run")], cwd=REPO,
                          capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    assert "valid recipe 'quickstart' with 10 stages" in proc.stdout
    assert "judges.gold: align.data.builtin:gold_judge gave one number per response" in proc.stdout
    assert "stages.reward.dataset (preferences): made by stage preferences during the run" in proc.stdout
    assert "align: error" not in proc.stderr
    print(f"\nalign validate recipes/quickstart.yaml: {seconds:.1f} s wall in a fresh process")


CASES = {
    "unimportable judge": (with_judge({"function": "no_such_module_xyz:judge"}),
                           ["judges.j.function: cannot import module 'no_such_module_xyz'"]),
    "judge without the function": (with_judge({"function": f"{__name__}:no_such_function"}),
                                   [f"judges.j.function: module '{__name__}' has no function 'no_such_function'"]),
    "judge returning the wrong length": (with_judge({"function": f"{__name__}:short_judge"}),
                                         ["returned 1 scores for 2 responses", "one number per response"]),
    "judge returning words": (with_judge({"function": f"{__name__}:word_judge"}),
                              ["judge 'j' returned 'good' for sample 0; scores must be numbers"]),
    "judge returning NaN": (with_judge({"function": f"{__name__}:nan_judge"}, stage=False),
                            ["judge 'j' returned nan for sample 0"]),
    "judge that raises": (with_judge({"function": f"{__name__}:broken_judge"}),
                          ["judge 'j' failed on sample 0: KeyError"]),
    "judge with an unknown option": (with_judge({"function": f"{__name__}:good_judge", "weight": 2}),
                                     ["judges.j.weight: a function judge has no option 'weight'"]),
    "judge without module:function": (with_judge({"function": "gold_judge"}),  # dotted module.function is a name
                                      ["judges.j.function: expected 'module:function'"]),
    "judge of two kinds": (with_judge({"function": f"{__name__}:good_judge", "llm": "gpt2"}),
                           ["judges.j: expected exactly one of"]),
    "bad lora field": (lambda raw: raw["stages"]["sft"].update(lora={"rank": 4}),
                       ["stages.sft.lora.rank: not a field of LoraConfig. Did you mean 'r'?"]),
    "lora field of the wrong type": (lambda raw: raw["stages"]["sft"].update(lora={"r": "big"}),
                                     ["stages.sft.lora.r: expected int (LoraConfig.r), got 'big'"]),
    "wrong args type": (lambda raw: raw["stages"]["pretrain"]["args"].update(learning_rate="fast"),
                        ["stages.pretrain.args.learning_rate: expected float (TrainingArguments.learning_rate), "
                         "got 'fast' (str)"]),
    "unknown scheduler": (lambda raw: raw["stages"]["sft"]["args"].update(lr_scheduler_type="cosin"),
                          ["stages.sft.args.lr_scheduler_type: expected one of linear, cosine"]),
    "missing model folder": (lambda raw: raw["stages"]["sft"].update(model="/nonexistent/models/my-sft"),
                             ["stages.sft.model: /nonexistent/models/my-sft does not exist"]),
    "bad preset": (lambda raw: raw["stages"]["pretrain"].update(model={"preset": "llama-huge"}),
                   ["stages.pretrain.model.preset: unknown preset 'llama-huge'"]),
    "misspelt model field": (lambda raw: raw["stages"]["pretrain"].update(model={"preset": "llama-micro", "hiden_size": 8}),
                             ["stages.pretrain.model.hiden_size: not a LlamaConfig field. Did you mean 'hidden_size'?"]),
    "bad stage value": (lambda raw: raw["stages"]["pretrain"].update(block_size="long"),
                        ["stages.pretrain.block_size: expected int, got 'long'"]),
    "bad dtype": (lambda raw: raw["stages"]["sft"].update(dtype="float8"),
                  ["stages.sft.dtype: unknown dtype 'float8'"]),
    "unknown chat template": (lambda raw: raw["stages"]["sft"].update(chat_template="lama3"),
                              ["stages.sft.chat_template: 'lama3' is neither a template TRL ships"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_mistake_is_caught_and_named(tmp_path, capsys, case):
    change, messages = CASES[case]
    code, out, err = validate(write_recipe(tmp_path, change), capsys)
    assert code == 2, out
    assert "Traceback" not in err
    for message in messages:
        assert message in err, err
    assert "align: 1 problem in" in err, err  # exactly the one mistake, nothing else


def test_missing_data_column_is_named(tmp_path, capsys):
    data = jsonl(tmp_path / "chat.jsonl", [{"question": "q", "answer": "a"}] * 3)
    code, out, err = validate(write_recipe(tmp_path, lambda raw: raw["datasets"].update(chat={"path": data})), capsys)
    assert code == 2
    assert "stages.sft.dataset (chat): columns ['question', 'answer'] match no known format" in err
    assert "rename: {old: new}" in err


def test_wrong_format_for_the_stage_is_named(tmp_path, capsys):
    data = jsonl(tmp_path / "chat.jsonl", [{"prompt": "q"}] * 3)
    code, out, err = validate(write_recipe(tmp_path, lambda raw: raw["datasets"].update(chat={"path": data})), capsys)
    assert code == 2
    assert "stages.sft.dataset (chat) is a prompt-only dataset (prompt) but this stage needs a conversational" in err


def test_bad_row_is_named_with_its_count_and_the_way_out(tmp_path, capsys):
    rows = [{"messages": [U("q"), A("a")]}, {"messages": [U("q"), {"role": "bot", "content": "a"}]},
            {"messages": [U("q"), A("a")]}, {"messages": [U("q"), A("")]}]
    data = jsonl(tmp_path / "chat.jsonl", rows)
    code, out, err = validate(write_recipe(tmp_path, lambda raw: raw["datasets"].update(chat={"path": data})), capsys)
    assert code == 2
    assert "stages.sft.dataset (chat): row 1, column 'messages': message 1 has role 'bot'" in err
    assert "2 of 4 rows are invalid" in err and "on_invalid_rows: drop" in err


def test_dropped_rows_are_announced_not_refused(tmp_path, capsys):
    rows = [{"messages": [U("q"), A("a")]}, {"messages": [U("q"), {"role": "bot", "content": "a"}]}]
    data = jsonl(tmp_path / "chat.jsonl", rows)
    change = lambda raw: raw["datasets"].update(chat={"path": data, "on_invalid_rows": "drop"})  # noqa: E731
    code, out, err = validate(write_recipe(tmp_path, change), capsys)
    assert code == 0, err
    assert "stages.sft.dataset (chat): 1 row, conversational; every row valid; 1 invalid row will be dropped " \
           "(1 x column 'messages': a message has role 'bot'" in out


def test_map_function_must_import(tmp_path, capsys):
    change = lambda raw: raw["datasets"]["chat"].update(map="no_such_module_xyz:fix")  # noqa: E731
    code, out, err = validate(write_recipe(tmp_path, change), capsys)
    assert code == 2 and "datasets.chat.map: cannot import module 'no_such_module_xyz'" in err
    assert "align: 1 problem in" in err


def test_duplicate_yaml_key_names_the_key_and_both_lines(tmp_path, capsys):
    path = tmp_path / "dup.yaml"
    path.write_text(MICRO.read_text().replace(
        "    args: {max_steps: 40,", "    args: {max_steps: 40, learning_rate: 1.0e-3,\n           learning_rate: 2.0e-3,"))
    lines = path.read_text().splitlines()
    first = next(i for i, line in enumerate(lines, 1) if "learning_rate: 1.0e-3" in line)
    code, out, err = validate(path, capsys)
    assert code == 2
    assert f"key 'learning_rate' appears twice in stages.pretrain.args (lines {first} and {first + 1})" in err


def test_duplicate_stage_names_are_caught(tmp_path, capsys):
    text = MICRO.read_text() + "  sft:\n    kind: sft\n    model: ${stages.pretrain}\n    dataset: chat\n"
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    code, out, err = validate(path, capsys)
    first = next(i for i, line in enumerate(text.splitlines(), 1) if line == "  sft:")
    assert code == 2 and f"key 'sft' appears twice in stages (lines {first} and {len(text.splitlines()) - 3})" in err


def test_every_problem_is_reported_not_just_the_first(tmp_path, capsys):
    def change(raw):
        with_judge({"function": f"{__name__}:short_judge"})(raw)
        raw["stages"]["pretrain"]["args"]["learning_rate"] = "fast"
        raw["stages"]["sft"]["lora"] = {"rank": 4}
        raw["stages"]["sft"]["model"] = "/nonexistent/model"
        raw["datasets"]["chat"] = {"path": jsonl(tmp_path / "chat.jsonl", [{"messages": [A("a")]}])}
    code, out, err = validate(write_recipe(tmp_path, change), capsys)
    assert code == 2
    for needle in ("stages.pretrain.args.learning_rate", "stages.sft.lora.rank", "stages.sft.model",
                   "stages.sft.dataset (chat): row 0", "returned 1 scores for 2 responses", "align: 5 problems in"):
        assert needle in err, needle
    assert "recipe 'micro' with 4 stages -> " in out and ": 5 problems" in out  # the plan is still printed


def test_hub_ids_and_hub_datasets_offline_are_noted_not_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def change(raw):
        raw["datasets"]["chat"] = {"hub": "trl-lib/Capybara", "split": "train[:100]"}
        raw["stages"]["sft"]["model"] = "HuggingFaceTB/SmolLM2-135M-Instruct"
    code, out, err = validate(write_recipe(tmp_path, change), capsys)
    assert code == 0, err
    assert "datasets.chat (hub trl-lib/Capybara): not checked (no network)" in out
    assert "stages.sft.model: HuggingFaceTB/SmolLM2-135M-Instruct: not checked (hub id)" in out


def test_hub_datasets_are_checked_on_their_first_rows_when_reachable(tmp_path, capsys, monkeypatch):
    import datasets

    import align.validate

    rows = [{"messages": [U("q"), A("a")]}] * 3 + [{"messages": [U("q"), U("again")]}] + [{"messages": [U("q"), A("a")]}] * 500
    calls = []

    def fake_load_dataset(path, name=None, *, split, revision=None, streaming=False):
        calls.append((path, split, streaming))
        return iter(rows)

    monkeypatch.setattr(align.validate, "hub_reachable", lambda: True)
    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    change = lambda raw: raw["datasets"].update(chat={"hub": "org/chats", "split": "train[:1000]"})  # noqa: E731
    code, out, err = validate(write_recipe(tmp_path, change), capsys)
    assert calls == [("org/chats", "train", True)]  # streamed: the head only, never the whole dataset
    assert code == 2 and "stages.sft.dataset (chat): row 3, column 'messages': two user messages in a row" in err
    change = lambda raw: raw["datasets"].update(chat={"hub": "org/chats", "on_invalid_rows": "drop"})  # noqa: E731
    code, out, err = validate(write_recipe(tmp_path, change), capsys)
    assert code == 0 and "stages.sft.dataset (chat): first 199 rows of hub org/chats, conversational" in out


def test_local_model_folder_is_checked(tmp_path, capsys, tiny_model_dir):
    empty = tmp_path / "empty_model"
    empty.mkdir()
    change = lambda raw: raw["stages"]["sft"].update(model=str(tiny_model_dir))  # noqa: E731
    code, out, err = validate(write_recipe(tmp_path, change), capsys)
    assert code == 0 and f"stages.sft.model: {tiny_model_dir} holds a model" in out
    change = lambda raw: raw["stages"]["sft"].update(model=str(empty))  # noqa: E731
    code, out, err = validate(write_recipe(tmp_path, change), capsys)
    assert code == 2 and f"stages.sft.model: {empty} holds no model (no config.json or adapter_config.json)" in err


def test_plan_reads_markers_cached_changed_upstream(tmp_path, capsys):
    from align.recipe import load_recipe
    from align.state import MARKER, spec_hash

    path = write_recipe(tmp_path)
    recipe = load_recipe(path)
    tokenizer = recipe.stages["tokenizer"]
    tokenizer.out_dir.mkdir(parents=True)
    (tokenizer.out_dir / MARKER).write_text(json.dumps({"spec_hash": spec_hash(recipe, tokenizer), "fingerprint": "f1"}))
    (tokenizer.out_dir / "tokenizer_config.json").write_text("{}")
    pretrain = recipe.stages["pretrain"]
    pretrain.out_dir.mkdir(parents=True)
    (pretrain.out_dir / MARKER).write_text(json.dumps({"spec_hash": spec_hash(recipe, pretrain), "fingerprint": "f2"}))
    (pretrain.out_dir / "config.json").write_text("{}")
    code, out, err = validate(path, capsys)
    assert code == 0, err
    assert "tokenizer: tokenizer: cached, skipped" in out and "pretrain: pretrain (after tokenizer): cached" in out
    assert "sft: sft (after pretrain): will run (new)" in out
    code, out, err = validate(path, capsys, "--set", "stages.pretrain.args.max_steps=41")
    assert code == 0 and "pretrain: pretrain (after tokenizer): will run (changed)" in out
    code, out, err = validate(path, capsys, "--set", "stages.tokenizer.vocab_size=500")
    assert "tokenizer: tokenizer: will run (changed)" in out and "pretrain: pretrain (after tokenizer): will run (upstream)" in out


def test_check_recipe_is_the_api_for_align_run(tmp_path):
    from align.errors import AlignError
    from align.recipe import load_recipe
    from align.validate import check_recipe

    result = check_recipe(load_recipe(write_recipe(tmp_path)))
    assert result.ok and result.problems == [] and [s.action for s in result.plan] == ["run"] * 3
    result.raise_for_problems()
    bad = load_recipe(write_recipe(tmp_path, lambda raw: raw["stages"]["sft"].update(lora={"rank": 4, "alpha": 2})))
    result = check_recipe(bad)
    assert len(result.problems) == 2
    with pytest.raises(AlignError, match=r"(?s)2 problems in recipe .*stages.sft.lora.rank.*\n\nstages.sft.lora.alpha"):
        result.raise_for_problems()
    only = check_recipe(bad, only=["tokenizer"])  # what `align run --only tokenizer` would meet
    assert only.ok and [s.action for s in only.plan] == ["run", "skip", "skip"]


def test_validate_says_which_sampling_backend_each_stage_uses(tmp_path, capsys):
    def change(raw):
        with_judge({"function": f"{__name__}:good_judge"})(raw)
        raw["stages"]["preferences"]["generation"] = {"backend": "transformers", "max_new_tokens": 8}
    code, out, err = validate(write_recipe(tmp_path, change), capsys)
    assert code == 0, err
    assert "stages.preferences: samples with transformers" in out
    assert "stages.sft: samples with" not in out  # SFT does not sample


def test_unknown_or_missing_sampling_backend_names_the_field(tmp_path, capsys):
    from align.eval.sampling import vllm_installed

    def backend(name):
        def change(raw):
            with_judge({"function": f"{__name__}:good_judge"})(raw)
            raw["stages"]["preferences"]["generation"] = {"backend": name}
        return change

    code, _, err = validate(write_recipe(tmp_path, backend("vlm")), capsys)
    assert code != 0 and "stages.preferences.generation.backend: unknown sampling backend 'vlm'. Did you mean 'vllm'?" in err
    if not vllm_installed():  # the ordinary venv: vLLM lives in .venv-vllm (make vllm-env)
        code, _, err = validate(write_recipe(tmp_path, backend("vllm")), capsys)
        assert code != 0 and "stages.preferences.generation.backend: vllm is requested, but vLLM is not installed" in err
        assert "make vllm-env" in err
