"""convert: ultrafeedback and convert: sharegpt on small local files in each public shape."""

import json

import pytest

from align.data import load_dataset, validate_dataset
from align.errors import AlignError


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def user(text):
    return {"role": "user", "content": text}


def bot(text):
    return {"role": "assistant", "content": text}


# ---------------------------------------------------------------- ultrafeedback

def uf(prompt, good, bad, **extra):
    """A row shaped like trl-lib/ultrafeedback_binarized: whole conversations, no prompt column."""
    return {"chosen": [*prompt, bot(good)], "rejected": [*prompt, bot(bad)], **extra}


def test_ultrafeedback_trl_lib_shape(tmp_path):
    rows = [uf([user("What color is the sky?")], "Blue, on a clear day.", "Green.", score_chosen=8.0, score_rejected=3.0),
            uf([{"role": "system", "content": "Be brief."}, user("Hi"), bot("Hello!"), user("2+2?")], "4", "5",
               score_chosen=9.0, score_rejected=1.0)]
    data = load_dataset({"path": write_jsonl(tmp_path / "uf.jsonl", rows), "convert": "ultrafeedback"}, name="uf")
    assert validate_dataset(data, name="uf", expected="preference") == "preference"
    assert sorted(data.column_names) == ["chosen", "prompt", "rejected", "score_chosen", "score_rejected"]
    assert data[0]["prompt"] == [user("What color is the sky?")]
    assert data[0]["chosen"] == [bot("Blue, on a clear day.")] and data[0]["rejected"] == [bot("Green.")]
    assert data[1]["prompt"] == [{"role": "system", "content": "Be brief."}, user("Hi"), bot("Hello!"), user("2+2?")]
    assert (data[1]["chosen"], data[1]["rejected"], data[1]["score_chosen"]) == ([bot("4")], [bot("5")], 9.0)


def test_ultrafeedback_h4_shape_string_prompt_and_messages_column(tmp_path):
    """HuggingFaceH4/ultrafeedback_binarized: a string prompt and a messages copy of the chosen dialogue."""
    row = uf([user("Name a fruit.")], "An apple.", "A carrot.", prompt_id="abc", score_chosen=7.5, score_rejected=2.0)
    row = {"prompt": "Name a fruit.", **row, "messages": row["chosen"]}
    path = write_jsonl(tmp_path / "h4.jsonl", [row, row])
    data = load_dataset({"path": path, "convert": "ultrafeedback", "limit": 1}, name="h4")
    assert validate_dataset(data, name="h4", expected="preference") == "preference"
    assert "messages" not in data.column_names and "prompt_id" in data.column_names
    assert data[0]["prompt"] == [user("Name a fruit.")]
    assert data[0]["chosen"] == [bot("An apple.")] and data[0]["rejected"] == [bot("A carrot.")]


def test_ultrafeedback_explicit_conversational_prompt_is_kept(tmp_path):
    rows = [{"prompt": [user("Say hi")], "chosen": [bot("Hi!")], "rejected": [bot("No.")]},  # already explicit
            {"prompt": [user("Say yo")], "chosen": [user("Say yo"), bot("Yo!")], "rejected": [user("Say yo"), bot("No.")]}]
    data = load_dataset({"path": write_jsonl(tmp_path / "x.jsonl", rows), "convert": "ultrafeedback"}, name="x")
    assert validate_dataset(data, name="x", expected="preference") == "preference"
    assert data["prompt"] == [[user("Say hi")], [user("Say yo")]]
    assert data["chosen"] == [[bot("Hi!")], [bot("Yo!")]]


GOOD = uf([user("q")], "a", "b")


@pytest.mark.parametrize("bad, column, message", [
    (uf([user("q1")], "a", "b") | {"rejected": [user("q2"), bot("b")]}, "chosen",
     r"expected chosen and rejected to share their prompt, but they differ from the first message"),
    ({"chosen": "q a", "rejected": "q b"}, "chosen", r"expected a whole conversation.*string pairs need no convert"),
    (GOOD | {"rejected": [user("q"), bot("b"), user("more?")]}, "rejected",
     r"expected the conversation to end with the assistant's answer, not a user message"),
    (uf([user("q")], "a", "   "), "rejected", r"expected a non-empty assistant answer.*empty or non-string content"),
    ({"chosen": [user("q"), bot("x"), user("r"), bot("a")], "rejected": [user("q"), bot("y"), user("r"), bot("b")]},
     "chosen", r"expected chosen and rejected to share every message before the final assistant answer, "
               r"but after the 1 shared message\(s\) chosen goes on with roles \['assistant', 'user', 'assistant'\]"),
    (uf([user("q")], "same", "same"), "chosen",
     r"expected two different answers, but chosen and rejected are the same conversation"),
    ({"chosen": [bot("q"), bot("a")], "rejected": [bot("q"), bot("b")]}, "chosen",
     r"expected the shared prompt to be \[system\] user .*must start with a user message"),
])
def test_ultrafeedback_bad_rows_name_the_row_and_column(tmp_path, bad, column, message):
    path = write_jsonl(tmp_path / "uf.jsonl", [GOOD, GOOD, bad])
    with pytest.raises(AlignError, match=rf"^datasets\.uf: row 2, column '{column}': convert: ultrafeedback {message}"):
        load_dataset({"path": path, "convert": "ultrafeedback", "shuffle": True}, name="datasets.uf")


def test_ultrafeedback_missing_columns(tmp_path):
    path = write_jsonl(tmp_path / "uf.jsonl", [{"prompt": "q", "completion": "a"}])
    with pytest.raises(AlignError, match=r"uf: convert: ultrafeedback needs columns chosen and rejected.*"
                                         r"chosen, rejected missing.*rename"):
        load_dataset({"path": path, "convert": "ultrafeedback"}, name="uf")


# ---------------------------------------------------------------- sharegpt

def test_sharegpt_roles_and_extra_columns(tmp_path):
    rows = [{"id": "a", "conversations": [{"from": "system", "value": "Be kind."}, {"from": "human", "value": "Hi"},
                                          {"from": "gpt", "value": "Hello!"}, {"from": "human", "value": "Bye"},
                                          {"from": "gpt", "value": "Goodbye.", "weight": 1}]},
            {"id": "b", "conversations": [{"from": "user", "value": "2+2?"}, {"from": "assistant", "value": "4"}],
             "text": "stray column that would make it language modelling"}]
    data = load_dataset({"path": write_jsonl(tmp_path / "sg.jsonl", rows), "convert": "sharegpt"}, name="sg")
    assert validate_dataset(data, name="sg", expected="conversational") == "conversational"
    assert sorted(data.column_names) == ["id", "messages"]
    assert data[0]["messages"] == [{"role": "system", "content": "Be kind."}, user("Hi"), bot("Hello!"), user("Bye"),
                                   bot("Goodbye.")]
    assert data[1]["messages"] == [user("2+2?"), bot("4")]


def test_sharegpt_after_rename(tmp_path):
    rows = [{"conversation": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]}]
    spec = {"path": write_jsonl(tmp_path / "sg.jsonl", rows), "rename": {"conversation": "conversations"}, "convert": "sharegpt"}
    assert load_dataset(spec, name="sg")["messages"] == [[user("Hi"), bot("Hello!")]]


def test_sharegpt_function_call_and_observation_become_a_tool_call_and_a_tool_message(tmp_path):
    """LLaMA-Factory's tool format: function_call / observation turns, a tools column of bare function schemas (JSON
    text) and a system column."""
    weather = {"name": "weather", "description": "Weather in a city",
               "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
    rows = [{"conversations": [{"from": "human", "value": "Weather in Paris?"},
                               {"from": "function_call", "value": json.dumps({"name": "weather", "arguments": {"city": "Paris"}})},
                               {"from": "observation", "value": '{"temp": 21}'},
                               {"from": "gpt", "value": "21 degrees."}],
             "system": "Be brief.", "tools": json.dumps([weather])},
            {"conversations": [{"from": "human", "value": "2+3?"},
                               {"from": "function_call", "value": json.dumps({"name": "add", "arguments": {"a": 2, "b": 3}})},
                               {"from": "observation", "value": "5"}, {"from": "gpt", "value": "5."}],
             "system": "", "tools": ""}]
    data = load_dataset({"path": write_jsonl(tmp_path / "lf.jsonl", rows), "convert": "sharegpt"}, name="lf")
    assert validate_dataset(data, name="lf", expected="conversational") == "conversational"
    assert data[0]["messages"] == [
        {"role": "system", "content": "Be brief."}, user("Weather in Paris?"),
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {
            "name": "weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "content": '{"temp": 21}', "name": "weather"}, bot("21 degrees.")]
    # each row keeps its own arguments (no {"city": null} added to the add call)
    assert data[1]["messages"][1]["tool_calls"][0]["function"]["arguments"] == {"a": 2, "b": 3}
    assert json.loads(data[0]["tools"]) == [{"type": "function", "function": weather}] and data[1]["tools"] is None
    bad = [{"conversations": [{"from": "human", "value": "Hi"}, {"from": "function_call", "value": "not json"},
                              {"from": "observation", "value": "5"}, {"from": "gpt", "value": "5."}]}]
    with pytest.raises(AlignError, match=r"row 0, column 'conversations': convert: sharegpt function_call value is not JSON"):
        load_dataset({"path": write_jsonl(tmp_path / "bad.jsonl", bad), "convert": "sharegpt"}, name="lf")


GOOD_SG = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}]}


@pytest.mark.parametrize("turns, message", [
    ([{"from": "human", "value": "Hi"}, {"from": "bing", "value": "Hello!"}],
     r"turn 1 has from 'bing'; expected one of human, user, gpt, assistant, system, function_call, observation, tool"),
    ([{"from": "human", "value": "Hi"}, {"from": "gpt", "value": ""}],
     r"expected \[system\] human, gpt, human, gpt ... ending with gpt, but after conversion message 1 \(assistant\) "
     r"has empty or non-string content"),
    ([{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello!"}, {"from": "human", "value": "And?"}],
     r"expected \[system\] human, gpt, .* but after conversion the last message must be from the assistant, not the user"),
    ([{"from": "gpt", "value": "Hi"}, {"from": "human", "value": "Hello!"}, {"from": "gpt", "value": "Bye"}],
     r"expected \[system\] human, gpt, .* but after conversion the conversation must start with a user message"),
    ([], r"expected a non-empty list of \{from, value\} turns"),
])
def test_sharegpt_bad_rows_name_the_row_and_column(tmp_path, turns, message):
    path = write_jsonl(tmp_path / "sg.jsonl", [GOOD_SG, {"conversations": turns}])
    with pytest.raises(AlignError, match=rf"^datasets\.sg: row 1, column 'conversations': convert: sharegpt {message}"):
        load_dataset({"path": path, "convert": "sharegpt"}, name="datasets.sg")


def test_sharegpt_missing_column_and_unknown_converter(tmp_path):
    path = write_jsonl(tmp_path / "sg.jsonl", [{"messages": [user("Hi"), bot("Hello!")]}])
    with pytest.raises(AlignError, match=r"sg: convert: sharegpt needs a column conversations.*conversations missing"):
        load_dataset({"path": path, "convert": "sharegpt"}, name="sg")
    with pytest.raises(AlignError, match=r"sg.convert: unknown conversion 'alpaca'; available: hh-rlhf, ultrafeedback, "
                                         r"sharegpt"):
        load_dataset({"path": path, "convert": "alpaca"}, name="sg")
