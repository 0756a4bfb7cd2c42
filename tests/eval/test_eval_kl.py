import copy

import pytest
import torch

from align.errors import AlignError
from align.eval.generation import generate, prompt_ids
from align.eval.kl import kl_estimates, kl_to_reference, sequence_logprobs, token_logprobs

PROMPTS = ["the cat", "a good phone", [{"role": "user", "content": "blue lamp"}]]


def sharpened(model, factor: float):
    """A copy whose logits are ``factor`` times larger (final norm scaled): peaked distributions, sizeable KLs."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        model.model.norm.weight.mul_(factor)
    return model


def test_sequence_logprobs_match_a_manual_forward(untied_model, tiny_tokenizer):
    response = "the dog is good"
    logp = sequence_logprobs(untied_model, tiny_tokenizer, ["hi"], [response])[0]
    text = f"<|bos|><|user|>hi<|eos|><|assistant|>{response}<|eos|>"
    ids = tiny_tokenizer(text, add_special_tokens=False)["input_ids"]
    n = len(tiny_tokenizer(response, add_special_tokens=False)["input_ids"]) + 1  # the response and its EOS
    with torch.no_grad():
        all_logp = torch.log_softmax(untied_model(torch.tensor([ids])).logits[0, :-1], -1)
    expected = all_logp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])][-n:]
    assert torch.allclose(logp, expected, atol=1e-5)
    batched = sequence_logprobs(untied_model, tiny_tokenizer, ["hi", "a much longer prompt than that"],
                                [response, "x"], batch_size=2)[0]
    assert torch.allclose(batched, logp, atol=1e-5)  # right padding changes nothing


def test_kl_of_identical_policies_is_zero(untied_model, tiny_tokenizer):
    responses = generate(untied_model, tiny_tokenizer, PROMPTS, max_new_tokens=8, seed=0)
    kl = kl_to_reference(untied_model, copy.deepcopy(untied_model), tiny_tokenizer, PROMPTS, responses)
    assert kl["k1"] == [0.0] * 3 and kl["k3"] == [0.0] * 3
    assert "k1" in kl["estimator"] and "k3" in kl["estimator"]
    assert all(n > 0 for n in kl["response_tokens"])


def exact_two_token_kl(policy, reference, context: list[int]):
    """KL(pi || pi_ref) over every 2-token continuation of ``context``, by enumeration.

    KL = KL(p1 || q1) + sum_a p1(a) KL(p2(.|a) || q2(.|a)); returns it with log p1 and log p2 ([V], [V, V]).
    """
    vocab = policy.config.vocab_size
    batch = torch.tensor([context + [a] for a in range(vocab)])
    with torch.no_grad():
        lp, lq = (torch.log_softmax(m(batch).logits.double(), -1) for m in (policy, reference))
    p1, q1, p2, q2 = lp[0, -2], lq[0, -2], lp[:, -1], lq[:, -1]
    step1 = (p1.exp() * (p1 - q1)).sum()
    step2 = (p2.exp() * (p2 - q2)).sum(-1)
    return float(step1 + (p1.exp() * step2).sum()), p1, p2


def test_sample_estimators_agree_with_the_exact_kl(untied_model, tiny_model_dir, tiny_tokenizer):
    """k1 and k3 averaged over samples from pi must match the enumerated KL within a few standard errors."""
    from transformers import AutoModelForCausalLM

    policy = sharpened(untied_model, 3.0)
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    context = prompt_ids(tiny_tokenizer, "the cat")
    exact, log_p1, log_p2 = exact_two_token_kl(policy, reference, context)
    assert exact > 0.1  # a KL worth estimating

    generator = torch.Generator().manual_seed(0)
    n = 3000
    first = torch.multinomial(log_p1.exp(), n, replacement=True, generator=generator)
    second = torch.stack([torch.multinomial(log_p2[a].exp(), 1, generator=generator)[0] for a in first.tolist()])
    sequences = [context + [a, b] for a, b in zip(first.tolist(), second.tolist())]
    starts = [len(context)] * n
    logp = token_logprobs(policy, sequences, starts, batch_size=512)
    ref_logp = token_logprobs(reference, sequences, starts, batch_size=512)
    expected = torch.stack([log_p1[first], log_p2[first, second]], -1).float()
    assert torch.allclose(torch.stack(logp), expected, atol=1e-4)

    k1, k3 = map(torch.tensor, zip(*(kl_estimates(a, b) for a, b in zip(logp, ref_logp))))
    assert (k3 >= 0).all()
    for estimate in (k1, k3):
        standard_error = float(estimate.std() / n ** 0.5)
        assert abs(float(estimate.mean()) - exact) < 4 * standard_error, (float(estimate.mean()), exact, standard_error)
    assert k3.std() < k1.std()


def test_different_tokenizers_make_kl_an_error(untied_model, tiny_tokenizer, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    from align.models import build_model
    from align.stages.tokenizer import train_bpe

    other = train_bpe(["completely different text, other words entirely! " * 3, "zebra quartz jumps"] * 20,
                      vocab_size=300)
    assert len(other) == len(tiny_tokenizer) and other.get_vocab() != tiny_tokenizer.get_vocab()
    reference = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    with pytest.raises(AlignError, match="different tokenizers"):
        kl_to_reference(untied_model, reference, tiny_tokenizer, ["hi"], ["x"], reference_tokenizer=other)
    smaller = train_bpe(["the cat"] * 10, vocab_size=280)
    with pytest.raises(AlignError, match="undefined"):
        kl_to_reference(untied_model, build_model({"preset": "llama-micro"}, smaller), tiny_tokenizer, ["hi"], ["x"])
