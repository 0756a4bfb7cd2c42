"""preferences stage: sample K responses per prompt from a policy, judge them, keep (best, worst).

This is the DPO paper's protocol (and RLAIF's): the pairs are on-policy for the SFT model, which
is what both the reward model and DPO should learn from. A pair is kept only when the judge's
scores differ by more than ``min_score_gap`` and the two texts differ. Output: a conversational
explicit-prompt preference dataset (``prompt``, ``chosen``, ``rejected``) with the scores kept as
``chosen_score`` / ``rejected_score``, saved with ``save_to_disk`` under ``dataset/``.
"""

from __future__ import annotations

import statistics

from align.errors import AlignError
from align.stages import training

REQUIRED = ("policy", "dataset", "judge")
DATASET_KEYS = ("dataset",)
EXPECTED = {"dataset": "prompt_only"}  # format per dataset key
JUDGE_KEYS = ("judge",)
KEYS = {
    "policy": "the model to sample from, normally ${stages.sft}",
    "dataset": "prompt-only data (prompt column, standard or conversational)",
    "judge": "name of a recipe judge that scores each response",
    "samples_per_prompt": "K responses sampled per prompt (default 4); the best and worst form the pair",
    "min_score_gap": "least score difference for a pair to be kept (default 0: any strict difference)",
    "generation": "decoding settings: max_new_tokens (64), temperature (1.0), top_p (1.0), top_k (0), batch_size (32); "
                  "backend: transformers (default) or vllm",
    "limit": "use only the first N prompts",
    "chat": "render prompts with the policy's chat template (default true); false continues them as raw text",
    "context_check": "warn (default), error or off: whether this stage samples after the context SFT trains in",
    "chat_template": "a TRL-shipped template name, default, or a .jinja file (default: the policy's own; align's "
                     "default for a model without one)",
    "chat_template_kwargs": "template variables for rendering prompts, e.g. {enable_thinking: false} (default: those "
                            "the model's tokenizer was saved with); a dataset's own override them row by row",
    "model_kwargs": training.MODEL_KEYS["model_kwargs"],
}
TYPES = {"samples_per_prompt": int, "min_score_gap": float, "limit": int, "chat": bool}
GENERATION_DEFAULTS = {"max_new_tokens": 64, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "batch_size": 32,
                       "backend": "transformers"}

# what align validate says of its model: the context check
model_findings = training.model_findings

def form_pairs(prompts: list, responses: list[list[str]], scores: list[list[float]], min_score_gap: float = 0.0,
               extras: list[dict] | None = None) -> list[dict]:
    """For each prompt, the highest- and lowest-scored of its K responses, if they really differ.

    Ties on score (gap <= min_score_gap) or identical texts give no pair: a pair whose two sides
    are equally good teaches the reward model and DPO nothing but noise. Empty responses are left
    out: TRL's formats (and align's row checks) need non-empty turns. ``extras``: per prompt, columns the pair
    keeps (its ``tools`` and ``chat_template_kwargs``, which DPO and the reward model render it with).
    """
    pairs = []
    for prompt, texts, values, extra in zip(prompts, responses, scores, extras or [{}] * len(prompts)):
        candidates = [i for i, text in enumerate(texts) if text.strip()]
        if len(candidates) < 2:
            continue
        best = max(candidates, key=lambda i: (values[i], -i))
        worst = min(candidates, key=lambda i: (values[i], i))
        if values[best] - values[worst] <= min_score_gap or texts[best].strip() == texts[worst].strip():
            continue
        pairs.append({"prompt": prompt, "chosen": texts[best], "rejected": texts[worst],
                      "chosen_score": float(values[best]), "rejected_score": float(values[worst]), **extra})
    return pairs


def as_conversational(pair: dict) -> dict:
    prompt = pair["prompt"]
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    return {**pair, "prompt": prompt,
            "chosen": [{"role": "assistant", "content": pair["chosen"]}],
            "rejected": [{"role": "assistant", "content": pair["rejected"]}]}


def describe(pairs: list[dict], n_prompts: int, k: int) -> str:
    gaps = sorted(p["chosen_score"] - p["rejected_score"] for p in pairs)
    if not gaps:
        return f"{n_prompts} prompts x {k} samples: no pairs kept."
    q = lambda f: gaps[min(len(gaps) - 1, int(f * len(gaps)))]  # noqa: E731
    return (f"{n_prompts} prompts x {k} samples -> {len(pairs)} pairs kept ({len(pairs) / n_prompts:.0%}).\n"
            f"Score gap (chosen - rejected): mean {statistics.fmean(gaps):.3f}, min {gaps[0]:.3f}, "
            f"25% {q(0.25):.3f}, median {q(0.5):.3f}, 75% {q(0.75):.3f}, max {gaps[-1]:.3f}.\n"
            f"Mean chosen score {statistics.fmean(p['chosen_score'] for p in pairs):.3f}, "
            f"mean rejected score {statistics.fmean(p['rejected_score'] for p in pairs):.3f}.")



def run(ctx) -> dict:
    import datasets

    from align.data import write_data_card
    from align.chat_templates import prepare_chat_template, row_options
    from align.eval.generation import note_ignored_settings
    from align.eval.sampling import sampler
    from align.eval.judge_factory import build_judge
    from align.functions import columns_of
    from align.models import load_causal_lm, load_tokenizer

    k = int(ctx.spec.get("samples_per_prompt", 4))
    if k < 2:
        raise AlignError(f"{ctx.where('samples_per_prompt')}: need at least 2 samples per prompt to form a pair, got {k}.")
    gen = ctx.options("generation", GENERATION_DEFAULTS)
    generate, decoding = sampler(gen, f"stages.{ctx.name}")
    ds = ctx.dataset("dataset", expected=EXPECTED["dataset"])
    if ctx.spec.get("limit"):
        ds = ds.select(range(min(int(ctx.spec["limit"]), len(ds))))
    prompts = ds["prompt"]
    judge = build_judge(ctx.spec["judge"], ctx.recipe.judges[ctx.spec["judge"]])
    options = training.model_kwargs(ctx)
    model = load_causal_lm(ctx.spec["policy"], field=ctx.where("policy"), model_kwargs=options)
    tokenizer = load_tokenizer(ctx.spec["policy"], field=ctx.where("policy"), model_kwargs=options)
    chat = bool(ctx.spec.get("chat", True))
    if chat:
        prepare_chat_template(tokenizer, ctx.spec.get("chat_template"), where=ctx.where("chat_template"),
                              context_check=ctx.spec.get("context_check"), kwargs=ctx.spec.get("chat_template_kwargs"))
    if ctx.is_main_process:
        note_ignored_settings(model, ctx.where("policy"))

    def sample(batch_index: int, chunk: list[dict]) -> list[tuple[list[str], list[float]]]:
        repeated = [row for row in chunk for _ in range(k)]
        texts = generate(model, tokenizer, [row["prompt"] for row in repeated], seed=ctx.seed + batch_index, chat=chat,
                         options=[row_options(row) for row in repeated], **decoding)
        values = judge.score([row["prompt"] for row in repeated], texts, **columns_of(repeated))  # e.g. an answer
        return [(texts[j * k:(j + 1) * k], values[j * k:(j + 1) * k]) for j in range(len(chunk))]

    # Whole generation batches go to each process; results come back in prompt order on every process.
    sampled = ctx.map_batches(sample, ds.to_list(), max(1, gen["batch_size"] // k))
    kept = [c for c in ("tools", "chat_template_kwargs") if c in ds.column_names]
    pairs = form_pairs(prompts, [texts for texts, _ in sampled], [values for _, values in sampled],
                       float(ctx.spec.get("min_score_gap", 0.0)), extras=[{c: row[c] for c in kept} for row in ds])
    if not pairs:
        raise AlignError(f"stages.{ctx.name}: the judge gave every response to every prompt the same score, so no "
                         f"preference pair was formed. Sample more per prompt, raise the temperature, or check the judge.")
    all_scores = [v for _, values in sampled for v in values]
    summary = describe(pairs, len(prompts), k)
    result = datasets.Dataset.from_list([as_conversational(p) if chat else p for p in pairs])
    if ctx.is_main_process:
        result.save_to_disk(str(ctx.out_dir / "dataset"))
        result.to_json(str(ctx.out_dir / "pairs.jsonl"))
        write_data_card(result, ctx.out_dir / "data_card_preferences.md", name=f"{ctx.name} (generated)",
                        spec={"policy": str(ctx.spec["policy"]), "judge": ctx.spec["judge"], "samples_per_prompt": k,
                              "generation": gen}, fmt="preference", tokenizer=tokenizer,
                        licence="generated by align from the prompts' dataset; inherits its licence",
                        notes=summary)
        print(f"{ctx.name}: {summary}")
    return {"prompts": len(prompts), "samples_per_prompt": k, "pairs": len(pairs),
            "mean_sample_score": sum(all_scores) / len(all_scores),
            "mean_chosen_score": statistics.fmean(p["chosen_score"] for p in pairs),
            "mean_rejected_score": statistics.fmean(p["rejected_score"] for p in pairs)}
