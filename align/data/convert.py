"""``convert:`` for common public dataset shapes, so they need no hand-written ``map:`` function.

- ``ultrafeedback``: ``chosen`` / ``rejected`` are whole conversations (user turn(s), then the
  assistant's answer), with or without a string ``prompt`` column, as in
  ``trl-lib/ultrafeedback_binarized`` and ``HuggingFaceH4/ultrafeedback_binarized``
  -> explicit-prompt conversational preferences: ``prompt`` = the shared leading messages,
  ``chosen`` / ``rejected`` = the final assistant message(s).
- ``sharegpt``: a ``conversations`` column of ``{from, value}`` turns (``from``: human / gpt /
  system, or user / assistant) -> a conversational ``messages`` column of ``{role, content}``.
  LLaMA-Factory's tool turns are kept: ``function_call`` (its value a JSON ``{name, arguments}`` or a
  list of them) becomes an assistant message with ``tool_calls``, ``observation`` a ``tool`` message;
  a ``tools`` column (JSON text or a list) becomes TRL's ``tools`` column of
  ``{type: function, function: {...}}`` schemas as JSON text, and a ``system`` column a leading
  system message.

The work is TRL's (``trl.data_utils.maybe_extract_prompt`` / ``maybe_convert_to_chatml``); this
module checks each row before and after, so a bad row is an error naming the dataset, the row (its
index in the source, before shuffle / limit) and the column, not a silently odd training example.
Columns that would change align's format detection (e.g. H4's ``messages`` copy of the chosen
dialogue) are dropped; other extra columns (scores, ids, source) are kept.
"""

from __future__ import annotations

from align.data.formats import FORMATS, check_messages, column_values, short
from align.errors import AlignError

SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system",
                  "function_call": "assistant", "observation": "tool", "tool": "tool"}
FORMAT_COLUMNS = {c for columns in FORMATS.values() for c in columns}  # prompt, chosen, rejected, completion, messages, text


def need_columns(ds, columns: tuple[str, ...], kind: str, name: str, what: str) -> None:
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise AlignError(f"{name}: convert: {kind} needs {what}; column(s) {', '.join(missing)} missing, the columns are "
                         f"{ds.column_names}. Use rename: {{old: new}} in the dataset spec if they are named otherwise.")


def plain_messages(messages) -> list[dict] | None:
    """``[{role, content}]`` without the null keys Arrow adds when rows' dicts differ; None if not a message list."""
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        return None
    out = [{k: v for k, v in m.items() if v is not None} for m in messages]
    if not all("role" in m and "content" in m for m in out):
        return None
    return [{"role": m["role"], "content": m["content"]} for m in out]


# ---------------------------------------------------------------- ultrafeedback

def convert_preference_row(row: dict, index: int, name: str) -> dict:
    from trl.data_utils import is_conversational, maybe_extract_prompt

    def fail(column: str, problem: str, value) -> AlignError:
        return AlignError(f"{name}: row {index}, column {column!r}: convert: ultrafeedback {problem}. "
                          f"Value: {short(value, 200)}")

    conversations = {}
    for column in ("chosen", "rejected"):
        messages = plain_messages(row[column])
        if messages is None or not is_conversational({column: messages}):
            hint = (" (string pairs need no convert: they are an implicit-prompt preference set as they are)"
                    if isinstance(row[column], str) else "")
            raise fail(column, "expected a whole conversation: a list of {role, content} messages, user turn(s) then "
                               f"the assistant's answer{hint}", row[column])
        if messages[-1]["role"] != "assistant":
            raise fail(column, f"expected the conversation to end with the assistant's answer, not a "
                               f"{messages[-1]['role']} message", messages)
        conversations[column] = messages

    example = dict(conversations)
    prompt = plain_messages(row.get("prompt"))  # a conversational prompt column is kept; a string one is replaced
    if prompt is not None and is_conversational({"prompt": prompt}):
        example["prompt"] = prompt
        if all(conversations[c][:len(prompt)] == prompt for c in conversations):  # implicit with a copy: strip it
            example = {c: conversations[c][len(prompt):] for c in conversations} | {"prompt": prompt}
    example = maybe_extract_prompt(example)

    chosen, rejected, prompt = example["chosen"], example["rejected"], example["prompt"]
    if not prompt:
        raise fail("chosen", f"expected chosen and rejected to share their prompt, but they differ from the first "
                             f"message on (rejected starts {short(conversations['rejected'][0])})",
                   conversations["chosen"][0])
    if chosen == rejected:
        raise fail("chosen", "expected two different answers, but chosen and rejected are the same conversation", chosen)
    for column, completion in (("chosen", chosen), ("rejected", rejected)):
        if not completion or any(m["role"] != "assistant" for m in completion):
            raise fail(column, f"expected chosen and rejected to share every message before the final assistant "
                               f"answer, but after the {len(prompt)} shared message(s) {column} goes on with roles "
                               f"{[m['role'] for m in completion]}", completion)
    problem = check_messages(prompt, must_start_user=True, last_role="user")
    if problem:
        raise fail("chosen", f"expected the shared prompt to be [system] user (assistant user ...), but {problem}", prompt)
    for column, completion in (("chosen", chosen), ("rejected", rejected)):
        problem = check_messages(completion, must_start_user=False, last_role=None, only_role="assistant")
        if problem:
            raise fail(column, f"expected a non-empty assistant answer after the prompt, but {problem}", completion)
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}


def convert_ultrafeedback(ds, *, name: str):
    need_columns(ds, ("chosen", "rejected"), "ultrafeedback", name, "columns chosen and rejected holding whole conversations")
    drop = [c for c in ds.column_names if c in FORMAT_COLUMNS]  # prompt/chosen/rejected are rewritten; messages etc. dropped
    return ds.map(lambda row, i: convert_preference_row(row, i, name), with_indices=True, remove_columns=drop,
                  desc=f"{name}: convert ultrafeedback")


# ---------------------------------------------------------------- sharegpt

def tool_calls(value, fail) -> list[dict]:
    """A ``function_call`` turn's value (JSON ``{name, arguments}`` or a list of them) as ``tool_calls``."""
    import json

    try:
        calls = json.loads(value) if isinstance(value, str) else value
    except ValueError as e:
        raise fail(f"function_call value is not JSON ({e})", value) from None
    calls = calls if isinstance(calls, list) else [calls]
    out = []
    for call in calls:
        if not isinstance(call, dict) or not isinstance(call.get("name"), str):
            raise fail("function_call value must be {name, arguments} (or a list of them)", value)
        arguments = call.get("arguments", call.get("parameters", {}))
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except ValueError:
                pass  # a template takes arguments as text too
        out.append({"type": "function", "function": {"name": call["name"], "arguments": arguments}})
    return out


def tool_schemas(value, fail) -> str | None:
    """A ``tools`` cell (JSON text or a list; LLaMA-Factory lists bare function schemas) as JSON text of
    ``{type: function, function: {...}}`` schemas: what chat templates render and TRL's trainers read."""
    import json

    if value is None or value == "":
        return None
    try:
        tools = json.loads(value) if isinstance(value, str) else value
    except ValueError as e:
        raise fail(f"the tools column is not JSON ({e})", value) from None
    if not isinstance(tools, list) or not all(isinstance(t, dict) for t in tools):
        raise fail("the tools column must be a list of function schemas", value)
    return json.dumps([t if "function" in t else {"type": "function", "function": t} for t in tools]) if tools else None


def convert_sharegpt_row(row: dict, index: int, name: str) -> dict:
    from trl.data_utils import maybe_convert_to_chatml

    def fail(problem: str, value) -> AlignError:
        return AlignError(f"{name}: row {index}, column 'conversations': convert: sharegpt {problem}. "
                          f"Value: {short(value, 200)}")

    turns = row["conversations"]
    if not isinstance(turns, list) or not turns:
        raise fail("expected a non-empty list of {from, value} turns", turns)
    cleaned = []
    for t, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise fail(f"expected turn {t} to be a {{from, value}} mapping, got {type(turn).__name__}", turn)
        cleaned.append({k: v for k, v in turn.items() if v is not None})  # Arrow fills keys other rows have with null
    messages = maybe_convert_to_chatml({"conversations": cleaned})["messages"]
    out = [{"role": "system", "content": row["system"]}] if isinstance(row.get("system"), str) and row["system"] else []
    for t, m in enumerate(messages):
        if "role" not in m or "content" not in m:
            raise fail(f"expected turn {t} to have keys from and value, it has {sorted(turns[t])}", turns[t])
        if m["role"] not in SHAREGPT_ROLES:
            raise fail(f"turn {t} has from {m['role']!r}; expected one of {', '.join(SHAREGPT_ROLES)}", turns[t])
        if m["role"] == "function_call":
            out.append({"role": "assistant", "content": "", "tool_calls": tool_calls(m["content"], fail)})
        elif SHAREGPT_ROLES[m["role"]] == "tool":
            calls = out[-1].get("tool_calls") if out else None  # name the result after its call when there is one
            named = {"name": calls[0]["function"]["name"]} if calls and len(calls) == 1 else {}
            out.append({"role": "tool", "content": m["content"], **named})
        else:
            out.append({"role": SHAREGPT_ROLES[m["role"]], "content": m["content"]})
    problem = check_messages(out, must_start_user=True, last_role="assistant")
    if problem:
        raise fail(f"expected [system] human, gpt, human, gpt ... ending with gpt, but after conversion {problem}", turns)
    result = {"messages": out}
    if "tools" in row:
        result["tools"] = tool_schemas(row["tools"], fail)
    return result


def convert_sharegpt(ds, *, name: str):
    import datasets

    need_columns(ds, ("conversations",), "sharegpt", name, "a column conversations of {from, value} turns")
    drop = ["conversations", *(c for c in ds.column_names if c in FORMAT_COLUMNS)]  # messages, prompt, text ... would
    drop += [c for c in ("system", "tools") if c in ds.column_names]  # change format detection; these are rewritten
    # Json messages: tool calls' arguments differ from row to row, and an Arrow struct would give each the others'
    # keys as nulls, which templates would render
    features = None
    if any(isinstance(t, dict) and t.get("from") == "function_call"
           for turns in column_values(ds, "conversations") if isinstance(turns, list) for t in turns):
        kept = {c: ds.features[c] for c in ds.column_names if c not in drop}
        features = datasets.Features({**kept, "messages": datasets.List(datasets.Json()),
                                      **({"tools": datasets.Value("string")} if "tools" in ds.column_names else {})})
    return ds.map(lambda row, i: convert_sharegpt_row(row, i, name), with_indices=True,
                  remove_columns=drop, features=features, desc=f"{name}: convert sharegpt")


CONVERT = {"ultrafeedback": convert_ultrafeedback, "sharegpt": convert_sharegpt}
