import torch

from align.eval.generation import generate, generate_chat, prompt_ids

PROMPTS = ["the cat", "a very good phone that really works and the battery is", [{"role": "user", "content": "hi"}],
           "red"]


def test_seeded_sampling_is_deterministic(untied_model, tiny_tokenizer):
    run = lambda seed: generate(untied_model, tiny_tokenizer, PROMPTS, max_new_tokens=12, seed=seed)  # noqa: E731
    first = run(0)
    assert first == run(0)
    assert first != run(1)
    assert all(isinstance(r, str) for r in first) and len(first) == len(PROMPTS)


def test_greedy_is_deterministic_and_padding_does_not_change_it(untied_model, tiny_tokenizer):
    tiny_tokenizer.padding_side = "right"
    batched = generate(untied_model, tiny_tokenizer, PROMPTS, max_new_tokens=12, greedy=True, batch_size=4)
    assert tiny_tokenizer.padding_side == "right"
    assert batched == generate(untied_model, tiny_tokenizer, PROMPTS, max_new_tokens=12, greedy=True, seed=5)
    one_by_one = [generate(untied_model, tiny_tokenizer, [p], max_new_tokens=12, greedy=True)[0] for p in PROMPTS]
    assert batched == one_by_one
    assert any(batched)  # a random untied model says something, so the comparison means something


def test_raw_text_continuation(untied_model, tiny_tokenizer):
    raw = generate(untied_model, tiny_tokenizer, ["the cat"], max_new_tokens=8, greedy=True, chat=False)
    ids = torch.tensor([prompt_ids(tiny_tokenizer, "the cat", chat=False)])
    expected = untied_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False,
                                     pad_token_id=tiny_tokenizer.pad_token_id)
    assert raw == tiny_tokenizer.batch_decode(expected[:, ids.shape[1]:], skip_special_tokens=True)


def greedy_tokens(model, ids: list[int], steps: int) -> list[int]:
    """Greedy decoding by hand, never stopping."""
    ids = list(ids)
    out = []
    with torch.no_grad():
        for _ in range(steps):
            out.append(int(model(torch.tensor([ids + out])).logits[0, -1].argmax()))
    return out


def test_generation_stops_at_eos(untied_model, tiny_tokenizer):
    """Give EOS (almost) the LM-head row of the model's 4th greedy token: the response is the first 3 tokens."""
    import copy

    model = copy.deepcopy(untied_model)
    ids = prompt_ids(tiny_tokenizer, "the cat")
    path = greedy_tokens(model, ids, 4)
    eos = tiny_tokenizer.eos_token_id
    with torch.no_grad():
        model.lm_head.weight[eos] = 1.01 * model.lm_head.weight[path[3]]
    continued = greedy_tokens(model, ids, 12)
    assert continued[:4] == path[:3] + [eos]
    response = generate(model, tiny_tokenizer, ["the cat"], max_new_tokens=12, greedy=True)[0]
    assert response == tiny_tokenizer.decode(path[:3])
    without_stop = tiny_tokenizer.decode([t for t in continued if t != eos], skip_special_tokens=True)
    assert len(without_stop) > len(response)  # the model would have gone on


def test_generate_chat_loads_a_folder(tiny_model_dir):
    out = generate_chat(tiny_model_dir, "the cat", max_new_tokens=4, seed=0)
    assert len(out) == 1 and isinstance(out[0], str)
