"""One context: the ids a stage trains a reply after are the ids the policy is sampled and scored after, on every
replica family and on align's own tokenizer, or align says where they differ (issue 22)."""

from __future__ import annotations

import logging

import pytest

from align.chat_templates import (DEFAULT_TEMPLATE, AlignError, check_context, context_problems,
                                  prepare_chat_template)
from align.testing import FAMILIES, build_tokenizer

DIFFERS = {"r1_distill"}  # DeepSeek's template opens <think> to sample and strips think blocks from trained replies


@pytest.fixture(scope="module")
def tokenizers():
    built = {}

    def get(name):
        if name not in built:
            tok = build_tokenizer(name)
            prepare_chat_template(tok, None, where="test.chat_template", context_check="off")
            built[name] = tok
        return built[name]

    return get


@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_every_family_trains_and_samples_in_one_context(name, tokenizers):
    problems = context_problems(tokenizers(name))
    if name in DIFFERS:
        assert len(problems) == 1 and "<think>" in problems[0] and "think block" in problems[0]
    else:
        assert problems == []


def test_align_own_tokenizer():
    from align.data.builtin import document
    from align.stages.tokenizer import train_bpe

    import random

    rng = random.Random(0)
    tok = train_bpe([document(rng, False) for _ in range(200)], vocab_size=600)
    assert context_problems(tok) == []


@pytest.mark.parametrize("name", ["gpt2", "pythia", "opt"])
def test_default_template_ends_its_generation_prompt_before_the_space(name):
    """The old default ('Assistant: ') ended every sampling context with a lone 'Ġ' SFT never trained after."""
    tok = build_tokenizer(name)
    tok.chat_template = DEFAULT_TEMPLATE.replace("{{ 'Assistant:' }}", "{{ 'Assistant: ' }}").replace(
        "{{ ' ' + message['content'] | trim", "{{ message['content']")
    old = context_problems(tok)
    assert len(old) == 1 and "whitespace" in old[0] and "'Ġ'" in old[0]
    prepare_chat_template(tok, "default", where="test.chat_template", context_check="off")
    assert context_problems(tok) == []
    prompt = [{"role": "user", "content": "hi"}]
    sampled = tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
    reply = tok.apply_chat_template(prompt + [{"role": "assistant", "content": "I love it."}], tokenize=True,
                                    return_dict=True)["input_ids"][len(sampled):]
    # a sampled reply decodes with its leading space and renders back to the very same ids
    text = tok.decode(reply, skip_special_tokens=True)
    assert text.startswith(" I")
    again = tok.apply_chat_template(prompt + [{"role": "assistant", "content": text}], tokenize=True,
                                    return_dict=True)["input_ids"]
    assert again == sampled + reply


def test_check_logs_once_and_errors_when_asked(tokenizers, caplog):
    tok = tokenizers("r1_distill")
    with caplog.at_level(logging.INFO, logger="align"):
        assert check_context(tok, "stages.sft")
    assert [r.levelname for r in caplog.records if "stages.sft" in r.getMessage()] == ["WARNING"]
    with pytest.raises(AlignError, match=r"stages\.sft: the policy is sampled after a context"):
        check_context(tok, "stages.sft", mode="error")
    assert check_context(tok, "stages.sft", mode="off") == []
    with pytest.raises(AlignError, match="stages.sft: expected one of warn, error, off"):
        check_context(tok, "stages.sft", mode="strict")


def test_the_check_uses_the_stage_conversation(tokenizers):
    """Mistral v0.3's template folds the system message into the last user turn, so it vanishes from a conversation
    whose reply follows: a dataset with system messages trains without the system prompt it samples with."""
    tok = tokenizers("mistral")
    assert context_problems(tok) == []
    row = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Review a lamp."},
                        {"role": "assistant", "content": "Bright."}]}
    assert check_context(tok, "stages.sft", row=row)


def test_generation_prompt_trained_samples_after_what_sft_trains_after():
    """DeepSeek-R1-Distill: the recipe chooses to sample after '<｜Assistant｜>', the prompt SFT trains replies after."""
    tok = build_tokenizer("r1_distill")
    prepare_chat_template(tok, None, where="stages.sft.chat_template", generation_prompt="trained",
                          context_check="error")
    prompt = [{"role": "user", "content": "hi"}]
    assert tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False).endswith("<｜Assistant｜>")
    assert context_problems(tok) == []
    with pytest.raises(AlignError, match="stages.sft.generation_prompt: expected template"):
        prepare_chat_template(tok, None, where="stages.sft.chat_template", generation_prompt="yes")


def test_quiet_mode_lets_trl_prefix_warnings_through(caplog):
    from align.cli import quiet_libraries

    names = ("trl", "trl.trainer.sft_trainer", "trl.trainer.dpo_trainer", "trl.trainer.kto_trainer")
    saved = {n: (logging.getLogger(n).level, list(logging.getLogger(n).filters)) for n in names}
    try:
        quiet_libraries()
        for name in ("trl.trainer.sft_trainer", "trl.trainer.grpo_trainer"):
            logging.getLogger(name).warning("The tokenized prompt is not a prefix of the tokenized prompt+completion")
            logging.getLogger(name).warning("some deprecation nobody can act on")
        messages = [(r.name, r.getMessage()) for r in caplog.records if r.name.startswith("trl")]
    finally:
        for name, (level, filters) in saved.items():
            logging.getLogger(name).setLevel(level)
            logging.getLogger(name).filters = filters
    assert messages == [("trl.trainer.sft_trainer", "The tokenized prompt is not a prefix of the tokenized "
                                                    "prompt+completion")]
