"""Tools and template arguments (issue 24): a ``tool`` role and a ``tools`` column rendered with the family's own
template, ``chat_template_kwargs`` (Qwen3's ``enable_thinking``, Llama 3's ``date_string``) in every rendering, and
SFT's loss on assistant turns only, never on tool results. On the Qwen3 and Llama-3 replicas."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from align.chat_templates import (context_problems, prepare_chat_template, render, row_options, template_kwargs)
from align.errors import AlignError
from align.eval.generation import prompt_ids
from align.testing import build_tokenizer

TOOLS = [{"type": "function", "function": {"name": "add", "description": "Add two numbers together",
                                           "parameters": {"type": "object", "properties": {"a": {"type": "number"},
                                                                                           "b": {"type": "number"}},
                                                          "required": ["a", "b"]}}},
         {"type": "function", "function": {"name": "weather", "description": "The weather in a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                                                          "required": ["city"]}}}]
QUESTION = [{"role": "user", "content": "What is 2 plus 3?"}]


def tool_conversation(i: int) -> list[dict]:
    """A tool call, its result, and the answer; the calls' arguments differ between rows (add vs weather)."""
    if i % 2:
        call, result, answer = ("weather", {"city": f"Paris{i}"}, "sunny and warm"), "SUNNY-RESULT", "It is sunny."
    else:
        call, result, answer = ("add", {"a": i, "b": 3}, "OBSERVED-SUM"), "OBSERVED-SUM", f"The sum is {i + 3}."
    return [{"role": "user", "content": f"Question number {i}?"},
            {"role": "assistant", "content": "", "tool_calls": [{"type": "function",
                                                                 "function": {"name": call[0], "arguments": call[1]}}]},
            {"role": "tool", "name": call[0], "content": result},
            {"role": "assistant", "content": answer}]


def prepared(family: str, **kwargs):
    tok = build_tokenizer(family)
    return prepare_chat_template(tok, None, where="stages.x.chat_template", context_check="off", **kwargs)


@pytest.mark.parametrize("family", ["qwen3", "llama3"])
def test_the_sampling_prompt_carries_the_rows_tool_schema(family):
    tok = prepared(family)
    with_tools = tok.decode(prompt_ids(tok, QUESTION, options=row_options({"tools": json.dumps(TOOLS)})))
    assert "Add two numbers together" in with_tools and '"weather"' in with_tools
    assert "Add two numbers together" not in tok.decode(prompt_ids(tok, QUESTION))
    # a whole tool conversation renders: the call, the tool's result in the tool role, the answer
    text = render(tok, tool_conversation(0), row_options({"tools": TOOLS}), tokenize=False)
    assert '"a": 0' in text and "OBSERVED-SUM" in text and text.rstrip().endswith(
        ("The sum is 3.<|im_end|>", "The sum is 3.<|eot_id|>"))


def test_enable_thinking_false_opens_no_think_block_and_is_saved_with_the_tokenizer(tmp_path):
    from transformers import AutoTokenizer

    thinking = prepared("qwen3")
    prompt = thinking.decode(prompt_ids(thinking, QUESTION))
    assert prompt.endswith("<|im_start|>assistant\n") and "<think>" not in prompt  # the model opens <think> itself

    tok = prepared("qwen3", kwargs={"enable_thinking": False})
    prompt = tok.decode(prompt_ids(tok, QUESTION))
    assert prompt.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")  # closed: the reply starts after it
    assert context_problems(tok) == []  # and the trained conversation has that same empty block before the reply
    tok.save_pretrained(tmp_path)  # later stages load the saved tokenizer: they render the same
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert template_kwargs(reloaded) == {"enable_thinking": False}
    assert reloaded.decode(prompt_ids(reloaded, QUESTION)) == prompt
    # a row's own chat_template_kwargs win over the stage's
    assert "</think>" not in tok.decode(prompt_ids(tok, QUESTION, options=row_options(
        {"chat_template_kwargs": {"enable_thinking": True}})))


def test_bad_chat_template_kwargs_are_refused_with_the_field():
    with pytest.raises(AlignError, match=r"stages\.x\.chat_template_kwargs: expected a mapping"):
        prepared("qwen3", kwargs=["enable_thinking"])
    with pytest.raises(AlignError, match="tools is set by align"):
        prepared("qwen3", kwargs={"tools": []})


def test_tool_rows_are_checked():
    from datasets import Dataset

    from align.data import validate_dataset

    good = Dataset.from_list([{"messages": tool_conversation(i), "tools": json.dumps(TOOLS)} for i in range(4)])
    assert validate_dataset(good, name="chat") == "conversational"
    bad_order = tool_conversation(0)
    bad_order[2], bad_order[1] = bad_order[1], bad_order[2]  # the result before its call
    with pytest.raises(AlignError, match="row 0.*a tool message must follow an assistant message with tool_calls"):
        validate_dataset(Dataset.from_list([{"messages": bad_order}]), name="chat")
    ends_in_call = tool_conversation(0)[:2]
    with pytest.raises(AlignError, match="ends with a tool call"):
        validate_dataset(Dataset.from_list([{"messages": ends_in_call}]), name="chat")
    with pytest.raises(AlignError, match="column 'tools'.*not JSON"):
        validate_dataset(Dataset.from_list([{"messages": tool_conversation(0), "tools": "[{oops"}]), name="chat")


# ---------------------------------------------------------------- SFT on tool conversations, through the stage

def write_tool_data(path: Path, n: int = 16) -> Path:
    with open(path, "w") as f:
        for i in range(n):
            f.write(json.dumps({"messages": tool_conversation(i), "tools": TOOLS}) + "\n")
    return path


@pytest.fixture(scope="module", params=["qwen3", "llama3"])
def tool_sft(request, hub_replica, tmp_path_factory):
    """The sft stage on tool conversations (1 step); records the SFTTrainer it built. Llama 3 is given a template
    variable (``date_string``) through ``chat_template_kwargs``, which TRL must render every row with."""
    import transformers

    from align.recipe import build_recipe
    from align.runner import run_recipe

    family, out = request.param, tmp_path_factory.mktemp(f"tools_{request.param}")
    trainers = {}
    original = transformers.Trainer.train

    def recording(self, *args, **kwargs):
        trainers["sft"] = self
        return original(self, *args, **kwargs)

    stage = {"kind": "sft", "model": str(hub_replica(family)), "dataset": "chat", "lora": {"r": 4, "lora_alpha": 8},
             "args": {"max_steps": 1, "per_device_train_batch_size": 4, "max_length": 4096, "logging_steps": 1}}
    if family == "llama3":
        stage["chat_template_kwargs"] = {"date_string": "01 Jan 1999"}
    recipe = build_recipe({"name": "tools", "seed": 0, "output_dir": str(out / "run"),
                           "datasets": {"chat": {"path": str(write_tool_data(out / "tools.jsonl"))}},
                           "stages": {"sft": stage}})
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(transformers.Trainer, "train", recording)
        run_recipe(recipe, echo=lambda *_: None)
    return family, trainers["sft"], out / "run" / "sft"


def test_sft_trains_assistant_turns_and_never_tool_results(tool_sft):
    family, trainer, _ = tool_sft
    tok = trainer.processing_class
    for index in (0, 1):  # an add row and a weather row: Arrow kept each row's own arguments (no null keys)
        row = trainer.train_dataset[index]
        text = tok.decode(row["input_ids"])
        assert "Add two numbers together" in text and "The weather in a city" in text  # the schema is in context
        assert "null" not in text
        trained = tok.decode([i for i, label in zip(row["input_ids"], row["labels"]) if label != -100])
        answer = tool_conversation(index)[-1]["content"]
        assert answer in trained
        assert "SUNNY-RESULT" not in trained and "tool_response" not in trained and "ipython" not in trained
        assert f"Question number {index}?" not in trained
        if family == "qwen3":  # its training template marks every assistant turn: the tool call is trained too
            assert '"name": "add"' in trained or '"name": "weather"' in trained
            assert "OBSERVED-SUM" not in trained.replace(answer, "") or index % 2  # the result, not the answer
        else:  # Llama 3.2's template has no generation markers: align trains the final answer as a completion
            assert trained.strip().startswith(answer) or answer in trained.split("<|end_header_id|>")[-1]
            assert "01 Jan 1999" in text  # chat_template_kwargs reached TRL's tokenisation


def test_sft_saves_the_stage_chat_template_kwargs_for_later_stages(tool_sft):
    from align.models import load_tokenizer

    family, _, stage_dir = tool_sft
    expected = {"date_string": "01 Jan 1999"} if family == "llama3" else {}
    assert template_kwargs(load_tokenizer(stage_dir)) == expected


def test_every_rendering_in_align_goes_through_render():
    """One place applies the chat template, so the stage's chat_template_kwargs and a row's tools reach every path
    (sampling, KL, judges, data cards, the context check)."""
    import ast

    root = Path(__file__).resolve().parents[1] / "align"
    calls = [f"{path.relative_to(root)}:{node.lineno}" for path in sorted(root.rglob("*.py"))
             for node in ast.walk(ast.parse(path.read_text()))
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
             and node.func.attr == "apply_chat_template"]
    assert len(calls) == 1 and calls[0].startswith("chat_templates.py:"), calls
