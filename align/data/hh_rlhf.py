"""Anthropic hh-rlhf rows -> TRL's explicit-prompt conversational preference format.

Each row is two whole dialogues (``\\n\\nHuman: `` / ``\\n\\nAssistant: `` turns) that share every
turn but the last assistant reply. The prompt is everything up to the last ``\\n\\nAssistant:``;
splitting at the longest common prefix instead would cut into replies that start alike.
"""

from __future__ import annotations

import re

from align.errors import AlignError

TURN = re.compile(r"\n\n(Human|Assistant): ?")
ASSISTANT = "\n\nAssistant:"


def parse_turns(text: str) -> list[dict]:
    """Messages of a dialogue; a few rows have two turns in a row from one side: they are joined."""
    parts = TURN.split(text)  # [preamble, role, content, role, content, ...]
    messages: list[dict] = []
    for role, content in zip(parts[1::2], parts[2::2]):
        role = "user" if role == "Human" else "assistant"
        if messages and messages[-1]["role"] == role:
            messages[-1]["content"] = f"{messages[-1]['content']}\n\n{content.strip()}".strip()
        else:
            messages.append({"role": role, "content": content.strip()})
    return messages


def split_dialogue(text: str) -> tuple[str, str]:
    cut = text.rfind(ASSISTANT)
    if cut < 0:
        raise ValueError("no assistant turn")
    return text[:cut], text[cut + len(ASSISTANT):].strip()


def convert_row(chosen: str, rejected: str) -> dict | None:
    """One pair, or None when the two dialogues do not share their prompt or a reply is empty."""
    try:
        prompt_c, reply_c = split_dialogue(chosen)
        prompt_r, reply_r = split_dialogue(rejected)
    except ValueError:
        return None
    prompt = parse_turns(prompt_c)
    if prompt_c != prompt_r or not reply_c or not reply_r or not prompt or prompt[-1]["role"] != "user" \
            or any(not m["content"] for m in prompt):
        return None
    return {"prompt": prompt, "chosen": [{"role": "assistant", "content": reply_c}],
            "rejected": [{"role": "assistant", "content": reply_r}]}


def convert_hh_rlhf(ds, *, name: str):
    import datasets

    for column in ("chosen", "rejected"):
        if column not in ds.column_names:
            raise AlignError(f"{name}: convert: hh-rlhf needs string columns chosen and rejected; found {ds.column_names}.")
    rows = [convert_row(c, r) for c, r in zip(ds["chosen"], ds["rejected"])]
    kept = [r for r in rows if r is not None and r["chosen"] != r["rejected"]]
    if not kept:
        raise AlignError(f"{name}: convert: hh-rlhf could not parse any row (expected dialogues of "
                         f"'\\n\\nHuman: ' / '\\n\\nAssistant: ' turns sharing all but the last reply).")
    if len(kept) < len(rows):
        print(f"{name}: hh-rlhf conversion dropped {len(rows) - len(kept)} of {len(rows)} rows "
              f"(prompts differ, a reply is empty, or chosen equals rejected).")
    return datasets.Dataset.from_list(kept)
