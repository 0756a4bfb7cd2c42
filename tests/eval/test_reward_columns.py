"""Rewards that see the data (issue 24): judges get the dataset's other columns as keywords, in align's
``(prompts, responses, **columns)`` convention or TRL's ``(prompts, completions, completion_ids, **kwargs)``, and
``trl.rewards`` functions work by name."""

from __future__ import annotations

import pytest

from align.errors import AlignError
from align.eval.judge_factory import build_judge
from align.eval.judges import FunctionJudge

PROMPTS = [[{"role": "user", "content": "Which is larger, 3 or 7?"}], [{"role": "user", "content": "Which is larger, 9 or 2?"}]]


def test_an_align_style_function_gets_the_column_it_names():
    seen = {}

    def exact(prompts, responses, answer):
        seen["answer"] = answer
        return [float(r.strip() == a) for r, a in zip(responses, answer)]

    judge = FunctionJudge(exact)
    assert judge.score(PROMPTS, ["7", "2"], answer=["7", "9"], source=["x", "y"], trainer_state=None) == [1.0, 0.0]
    assert seen["answer"] == ["7", "9"]  # 'source' and 'trainer_state' are not parameters of it: not passed
    assert judge.compare(PROMPTS, ["7", "9"], ["3", "2"], answer=["7", "9"]) == [1.0, 1.0]


def test_a_trl_style_function_gets_message_completions_and_every_keyword():
    seen = {}

    def reward(prompts, completions, completion_ids=None, **kwargs):
        seen.update(completions=completions, completion_ids=completion_ids, kwargs=kwargs)
        return [1.0] * len(completions)

    FunctionJudge(reward).score(PROMPTS, ["7", "9"], answer=["7", "9"], completion_ids=[[1], [2]])
    assert seen["completions"] == [[{"role": "assistant", "content": "7"}], [{"role": "assistant", "content": "9"}]]
    assert seen["completion_ids"] == [[1], [2]] and seen["kwargs"] == {"answer": ["7", "9"]}
    FunctionJudge(reward).score(["a plain prompt"], ["text"])  # a string prompt: the completion is text, as in TRL
    assert seen["completions"] == ["text"]


def test_a_function_without_its_column_names_the_failing_sample():
    def needs_answer(prompts, responses, answer):
        return [float(r == a) for r, a in zip(responses, answer)]

    with pytest.raises(AlignError, match="judge 'needs_answer' failed on sample 0: TypeError.*answer"):
        FunctionJudge(needs_answer).score(PROMPTS, ["7", "2"])  # the dataset has no answer column


def test_trl_rewards_work_by_name():
    judge = build_judge("format", {"function": "trl.rewards.think_format_reward"})  # dotted, as TRL's docs write it
    assert judge.score(PROMPTS, ["<think>\nsmall\n</think>7", "9"]) == [1.0, 0.0]
    with pytest.raises(AlignError, match=r"judges\.nope\.function: module 'trl\.rewards' has no function"):
        build_judge("nope", {"function": "trl.rewards.no_such_reward"})


def test_trl_accuracy_reward_reads_the_solution_column():
    pytest.importorskip("math_verify", reason="trl.rewards.accuracy_reward needs the math extra (math-verify)")
    judge = build_judge("accuracy", {"function": "trl.rewards:accuracy_reward"})
    scores = judge.score(PROMPTS, [r"The answer is $\boxed{7}$", r"The answer is $\boxed{2}$"], solution=["$7$", "$9$"])
    assert scores == [1.0, 0.0]


def test_the_verifiable_task_reward_and_its_held_out_split():
    from align.data.builtin import load_builtin
    from align.data.verifiable import correct

    parity = lambda prompt: "odd" if int(prompt.split()[0]) % 2 else "even"  # noqa: E731 -- "4821 is"
    train, held = load_builtin("parity", "prompts", size=300), load_builtin("parity", "eval_prompts")
    assert not set(train["prompt"]) & set(held["prompt"])  # no held-out problem is trained on
    sft = load_builtin("parity", "sft", size=400)
    pretrain = "\n".join(load_builtin("parity", "pretrain", size=400)["text"])
    assert not set(sft["prompt"]) & set(held["prompt"])
    assert not any(f"\n{prompt} " in "\n" + pretrain for prompt in held["prompt"])
    assert all(r["answer"] == parity(r["prompt"]) for r in held)
    wrong = sum(r["completion"].strip() != parity(r["prompt"]) for r in sft)
    assert 0.25 < wrong / len(sft) < 0.45  # the noisy SFT answers that leave verifiable rewards room
    assert correct([[{"role": "assistant", "content": "Odd, since it ends in 1"}], " even\n12", ""],
                   ["odd", "odd", "odd"]) == [1.0, 0.0, 0.0]


def test_a_datasets_chat_template_kwargs_become_trls_per_row_column(tmp_path):
    from align.data import load_dataset

    ds = load_dataset({"builtin": "parity", "split": "prompts", "size": 4,
                       "chat_template_kwargs": {"enable_thinking": False}}, name="datasets.p")
    assert ds["chat_template_kwargs"] == [{"enable_thinking": False}] * 4
    with pytest.raises(AlignError, match=r"datasets\.p\.chat_template_kwargs: expected a mapping"):
        load_dataset({"builtin": "parity", "split": "prompts", "chat_template_kwargs": "no"}, name="datasets.p")
