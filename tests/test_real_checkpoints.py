"""What Hub checkpoints bring that align's own model does not: sampling settings in generation_config.json,
BOS-adding tokenizers, templates TRL cannot patch, no template at all, dropout kept as a float, bf16 storage."""

from __future__ import annotations

import copy

import datasets
import pytest
import torch
from transformers import AutoModelForCausalLM

from align.errors import AlignError
from align.eval.generation import declared_decoding, generate, pad_batch, prompt_ids
from align.models import load_causal_lm, load_for_training, load_tokenizer
from align.testing import FAMILIES, length_judge

PROMPTS = ["Write a review of the lamp.", [{"role": "user", "content": "What do you think of the phone?"}]]


def messy_generation_config(model):
    """Settings a checkpoint may ship that would change what is sampled, if they leaked in."""
    config = model.generation_config
    config.do_sample, config.temperature, config.top_k, config.top_p = True, 0.7, 20, 0.8
    config.repetition_penalty, config.min_p, config.typical_p = 1.3, 0.3, 0.5
    config.suppress_tokens = list(range(10, 60))
    return model


def test_generate_samples_only_the_declared_distribution(hub_replica):
    path = hub_replica("qwen2_5")
    tok = load_tokenizer(path)
    shipped = messy_generation_config(load_causal_lm(path))
    blank = load_causal_lm(path)
    blank.generation_config = type(blank.generation_config)(eos_token_id=shipped.generation_config.eos_token_id)
    kwargs = dict(max_new_tokens=12, seed=3, return_ids=True)
    assert generate(shipped, tok, PROMPTS * 3, **kwargs) == generate(blank, tok, PROMPTS * 3, **kwargs)
    assert shipped.generation_config.repetition_penalty == 1.3  # the model's own config is left as it was


def ppo_trainer(path, tmp_path, prompts, **kwargs):
    from align.ppo import PPOConfig, PPOTrainer

    model, tok = load_for_training(path)
    args = PPOConfig(output_dir=str(tmp_path), max_steps=1, rollout_batch_size=4, num_mini_batches=1,
                     max_new_tokens=10, use_cpu=True, report_to="none", disable_tqdm=True, eval_steps=0)
    return PPOTrainer(model, reward_funcs=[length_judge], processing_class=tok, args=args,
                      train_dataset=datasets.Dataset.from_dict({"prompt": prompts}), **kwargs)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_ppo_rollout_logprobs_are_those_of_the_sampler(family, hub_replica, tmp_path):
    """The log-probs PPO trains on equal the sampler's own (transformers' processed scores), even when the
    checkpoint ships min_p / typical_p / suppress_tokens / a repetition penalty."""
    trainer = ppo_trainer(hub_replica(family), tmp_path, ["Review the lamp.", "Review the phone."] * 2)
    messy_generation_config(trainer.policy)
    ids = trainer.train_ids[:4]
    torch.manual_seed(0)
    batch = trainer.rollout(ids)
    padded, mask = pad_batch(ids, trainer.tokenizer.pad_token_id, "left")
    width = padded.size(1)
    torch.manual_seed(0)
    policy = trainer.policy.eval()
    with torch.no_grad(), declared_decoding(policy, trainer.generation_config) as config:
        out = policy.generate(input_ids=padded, attention_mask=mask, generation_config=config,
                              output_scores=True, return_dict_in_generate=True)
    steps = batch["responses"].size(1)
    assert torch.equal(out.sequences[:, width:width + steps] * batch["mask"].long(),
                       batch["responses"] * batch["mask"].long())
    sampler = torch.stack([torch.log_softmax(s.float(), -1) for s in out.scores[:steps]], 1)
    sampler = sampler.gather(-1, batch["responses"][..., None]).squeeze(-1) * batch["mask"]
    assert (sampler - batch["logprobs"]).abs().max().item() <= 1e-4


def test_ppo_renders_plain_string_prompts_like_every_other_stage(hub_replica, tmp_path):
    """A string prompt is a user message under the chat template (Llama-3 answered nothing without it)."""
    trainer = ppo_trainer(hub_replica("llama3"), tmp_path, ["Review the lamp."] * 4)
    tok = trainer.tokenizer
    expected = tok.apply_chat_template([{"role": "user", "content": "Review the lamp."}], add_generation_prompt=True,
                                       tokenize=True, return_dict=True)["input_ids"]
    assert trainer.train_ids[0] == expected == prompt_ids(tok, "Review the lamp.")
    assert expected[0] == tok.bos_token_id and expected.count(tok.bos_token_id) == 1
    raw = ppo_trainer(hub_replica("llama3"), tmp_path / "raw", ["Review the lamp."] * 4, chat=False)
    assert raw.train_ids[0] == tok("Review the lamp.")["input_ids"]  # chat=False: raw text, the tokenizer's BOS


def test_ppo_switches_off_dropout_stored_as_a_float(hub_replica, tmp_path):
    trainer = ppo_trainer(hub_replica("opt"), tmp_path, ["Review the lamp."] * 4)
    floats = {(type(m).__name__, k): v for m in trainer.policy.modules() for k, v in vars(m).items()
              if isinstance(v, float) and k.endswith(("dropout", "pdrop"))}
    assert floats and set(floats.values()) == {0.0}
    policy = trainer.policy.train()
    ids = torch.tensor([trainer.train_ids[0]])
    assert torch.equal(policy(input_ids=ids).logits, policy(input_ids=ids).logits)


def test_ppo_value_model_holds_fp32_master_weights(hub_replica, tmp_path):
    trainer = ppo_trainer(hub_replica("smollm2"), tmp_path, ["Review the lamp."] * 4)
    assert all(p.dtype == torch.float32 for p in trainer.model.parameters())


def test_bf16_checkpoint_loads_as_fp32_for_training_and_auto_on_request(hub_replica):
    path = hub_replica("llama3")
    assert AutoModelForCausalLM.from_pretrained(path).dtype == torch.bfloat16  # what transformers gives by default
    assert load_for_training(path)[0].dtype == torch.float32
    assert load_causal_lm(path, dtype="auto").dtype == torch.bfloat16
    with pytest.raises(AlignError, match="stages.sft.dtype: unknown dtype 'bf32'"):
        load_causal_lm(path, dtype="bf32", field="stages.sft.dtype")


def test_kl_is_scored_on_the_sampled_token_ids(hub_replica):
    """Re-rendering text through Qwen's template scores a newline after <|im_end|> that was never sampled."""
    from align.eval.kl import kl_from_ids, sequence_logprobs, token_logprobs

    path = hub_replica("qwen2_5")
    tok, policy = load_tokenizer(path), load_causal_lm(path)
    reference = copy.deepcopy(policy)
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.05 * torch.randn_like(p))
    texts, sampled = generate(policy, tok, PROMPTS, max_new_tokens=8, seed=0, return_ids=True)
    kl = kl_from_ids(policy, reference, sampled, pad_id=tok.pad_token_id)
    assert kl["response_tokens"] == [len(r) for _, r in sampled]
    for i, (p, r) in enumerate(sampled):
        own = token_logprobs(policy, [p + r], [len(p)])[0]
        ref = token_logprobs(reference, [p + r], [len(p)])[0]
        assert len(own) == len(r) and kl["k1"][i] == pytest.approx(float((own - ref).sum()), abs=1e-5)
    ended = [i for i, (_, r) in enumerate(sampled) if r and r[-1] in (tok.eos_token_id, tok.convert_tokens_to_ids("<|im_end|>"))]
    for i in ended:  # the text path scores what the template appends after the end of turn
        assert len(sequence_logprobs(policy, tok, [PROMPTS[i]], [texts[i]])[0]) != len(sampled[i][1])


def run_stage(tmp_path, stage: dict, datasets_: dict | None = None):
    from align.recipe import build_recipe
    from align.runner import run_recipe

    raw = {"name": "t", "output_dir": str(tmp_path), "datasets": datasets_ or {
        "chat": {"builtin": "reviews", "split": "sft", "limit": 16},
        "prompts": {"builtin": "reviews", "split": "prompts", "limit": 4}},
        "judges": {"length": {"function": "align.testing:length_judge"}}, "stages": {"s": stage}}
    return run_recipe(build_recipe(raw), echo=lambda *_: None)["s"]


def test_unpatchable_template_with_explicit_assistant_only_loss_is_a_clear_error(hub_replica, tmp_path):
    """Llama-3.2's template has no generation markers and TRL cannot patch it."""
    with pytest.raises(AlignError, match=r"stages\.s\.args\.assistant_only_loss: .*no \{% generation %\} markers"):
        run_stage(tmp_path, {"kind": "sft", "model": str(hub_replica("llama3")), "dataset": "chat",
                             "args": {"max_steps": 1, "assistant_only_loss": True}})


def test_template_choice_and_plain_text_prompts(hub_replica, tmp_path):
    gpt2 = str(hub_replica("gpt2"))
    with pytest.raises(AlignError, match=r"stages\.s\.chat_template: 'llama9' is neither a template TRL ships"):
        run_stage(tmp_path / "a", {"kind": "sft", "model": gpt2, "dataset": "chat", "chat_template": "llama9"})
    run_stage(tmp_path / "b", {"kind": "sft", "model": gpt2, "dataset": "chat", "chat_template": "qwen2_5",
                               "args": {"max_steps": 1}})
    assert "<|im_start|>" in load_tokenizer(tmp_path / "b" / "s").chat_template  # saved for the later stages
    prompts = {"p": {"path": str(write_jsonl(tmp_path / "p.jsonl", [{"prompt": "The lamp is"}] * 4))}}
    metrics = run_stage(tmp_path / "c", {"kind": "preferences", "policy": gpt2, "dataset": "p", "judge": "length",
                                         "chat": False, "samples_per_prompt": 3,
                                         "generation": {"max_new_tokens": 8}}, prompts)
    pairs = datasets.load_from_disk(str(tmp_path / "c" / "s" / "dataset"))
    assert metrics["pairs"] >= 1 and isinstance(pairs[0]["prompt"], str) and isinstance(pairs[0]["chosen"], str)


def write_jsonl(path, rows):
    import json

    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_hub_ids_with_dots_are_hub_ids_and_missing_paths_are_errors(tmp_path):
    from align.models import resolve_model_path

    assert resolve_model_path("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    assert resolve_model_path("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    with pytest.raises(AlignError, match="does not exist"):
        resolve_model_path(str(tmp_path / "missing"))
