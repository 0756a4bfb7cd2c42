"""evaluate stage: every policy on the same held-out prompts with the same decoding settings.

Per policy: mean score under each judge, KL(pi || pi_ref) to the reference policy estimated from
the policy's own samples, response length, perplexity and bits per byte on held-out text, and the
win rate against the reference under the primary judge (ties count half) with a bootstrap 95 %
interval; per judge, the mean score's difference from the reference on the same prompts with a paired
sign-flip interval (``score_vs_reference``: for a verifier judge scoring 0/1, the accuracy gain); plus a
pairwise win-rate matrix. Writes ``metrics.json`` and ``samples.jsonl``.
"""

from __future__ import annotations

import json
import logging
import statistics
from pathlib import Path

from align.errors import AlignError, suggest
from align.chat_templates import row_options
from align.functions import columns_of
from align.stages import training

log = logging.getLogger("align")

REQUIRED = ("policies", "prompts", "judges")
DATASET_KEYS = ("prompts", "heldout")
EXPECTED = {"prompts": "prompt_only", "heldout": "language_modeling"}  # format per dataset key
JUDGE_KEYS = ("judges",)
KEYS = {
    "policies": "mapping of names to policies, e.g. {sft: ${stages.sft}, ppo: ${stages.ppo}, dpo: ${stages.dpo}}",
    "reference": "the policy everything is compared with (KL, win rate); default: the first",
    "judges": "judge names; the first is the primary judge for win rates",
    "prompts": "held-out prompt-only dataset",
    "heldout": "held-out text for perplexity and bits per byte (optional)",
    "generation": "decoding: max_new_tokens (64), temperature (1.0), top_p (1.0), top_k (0), greedy (false), batch_size (32); backend: transformers (default) or vllm",
    "limit": "evaluate on the first N prompts only",
    "n_bootstrap": "bootstrap resamples for win-rate intervals (default 2000)",
    "metrics": "extra `evaluate` modules applied to every policy's responses: a bundled name (distinct_n), a local "
               "module folder or file, or a hub id (online); or {module: ..., args: {...}} for compute() arguments",
    "benchmarks": "lm-evaluation-harness tasks run on every policy: a list of task names, or {tasks: [...], "
                  "include_path: a folder of task YAMLs, limit, num_fewshot, batch_size, apply_chat_template}; results "
                  "in metrics.json, the report and the trackers (pip install -e \".[eval]\")",
    "length_anchors": "sample every policy a second time and judge it against itself (default true): the rows that "
                      "identify the length-controlled win rate's length slope (AlpacaEval's gamed-baseline rows)",
    "chat": "render prompts with each policy's chat template (default true); false continues them as raw text",
    "context_check": "warn (default), error or off: whether this stage samples after the context SFT trains in",
    "chat_template": "the template prompts are rendered with: a TRL-shipped name, default, or a .jinja file "
                     "(default: each policy's own; align's default for a model without one)",
    "chat_template_kwargs": "template variables for rendering prompts, e.g. {enable_thinking: false} (default: those "
                            "the model's tokenizer was saved with); a dataset's own override them row by row",
    "model_kwargs": training.MODEL_KEYS["model_kwargs"] + " (every policy)",
}
TYPES = {"limit": int, "n_bootstrap": int, "chat": bool, "reference": str, "length_anchors": bool}
GENERATION_DEFAULTS = {"max_new_tokens": 64, "temperature": 1.0, "top_p": 1.0, "top_k": 0, "greedy": False, "batch_size": 32,
                       "backend": "transformers"}
KL_ESTIMATOR = ("k1: mean over the policy's own samples of sum_t [log pi(a_t|s_t) - log pi_ref(a_t|s_t)] "
                "(unbiased); kl_k3 is the lower-variance, always non-negative k3 estimator")


def policies_and_reference(spec: dict, where: str) -> tuple[dict, str]:
    """The policies to evaluate and the name of the reference among them."""
    policies = spec.get("policies")
    if not isinstance(policies, dict) or not policies:
        raise AlignError(f"{where}.policies: expected a mapping of names to policies, e.g. "
                         f"{{sft: ${{stages.sft}}, dpo: ${{stages.dpo}}}}; got {policies!r}.")
    reference = spec.get("reference", next(iter(policies)))
    if reference not in policies:
        raise AlignError(f"{where}.reference: {reference!r} is not one of the policies "
                         f"({', '.join(policies)}).{suggest(reference, policies)}")
    return policies, reference


def check(spec: dict, where: str) -> list[str]:
    from align.eval.benchmarks import options

    problems = []
    try:
        policies_and_reference(spec, where)
    except AlignError as e:
        problems.append(str(e))
    if spec.get("benchmarks") is not None:
        try:
            options(spec["benchmarks"], f"{where}.benchmarks")
        except AlignError as e:
            problems.append(str(e))
    return problems


def model_refs(spec: dict) -> dict:
    """Each policy (the reference is one of them)."""
    policies = spec.get("policies")
    return {f"policies.{name}": (path, "model") for name, path in policies.items()} if isinstance(policies, dict) else {}


def prompt_as_text(prompt) -> str:
    """The last user message of a conversational prompt (what a reader of samples wants to see)."""
    if isinstance(prompt, str):
        return prompt
    return next(m["content"] for m in reversed(prompt) if m["role"] == "user")


def load_policy_tokenizer(ctx, path):
    """A policy's tokenizer with the chat template its prompts are rendered with (``chat_template:``, or align's
    default for a model without one) unless ``chat: false`` continues prompts as raw text."""
    from align.chat_templates import prepare_chat_template
    from align.models import load_tokenizer

    tokenizer = load_tokenizer(path, model_kwargs=training.model_kwargs(ctx))
    if ctx.spec.get("chat", True):  # the context check runs once per policy, in evaluate_policy (sampling_context)
        prepare_chat_template(tokenizer, ctx.spec.get("chat_template"), where=ctx.where("chat_template"),
                              context_check="off", kwargs=ctx.spec.get("chat_template_kwargs"))
    return tokenizer


def context_verdict(ctx, name: str, context: dict) -> None:
    """The context check of one policy, from the problems ``sampling_context`` found: ``context_check: error``
    stops before sampling, ``warn`` (the default) names the policy, ``off`` says nothing."""
    mode = ctx.spec.get("context_check") or "warn"
    for problem in context["problems"] if mode != "off" else []:
        if mode == "error":
            raise AlignError(f"{ctx.where('policies')}.{name}: {problem}")
        if ctx.is_main_process:
            log.warning("%s.%s: %s", ctx.where("policies"), name, problem)


def same_vocabulary(a, b) -> bool:
    return a.get_vocab() == b.get_vocab()


def policy_kind(path) -> str | None:
    from align.state import read_marker

    marker = read_marker(path)
    return marker.get("kind") if marker else None


def length_anchor(ctx, model, tokenizer, rows, records, judge, generation, chat) -> dict:
    """A second sample of the policy on every prompt, judged against its first: the same policy on both
    sides, so its true win rate at equal length is 0.5 and any pull of the outcome comes from length.
    These rows let the length-controlled win rate tell the judge's length preference from quality."""
    from align.eval.sampling import sampler

    generate, decoding = sampler(generation, f"stages.{ctx.name}")
    offset = 1_000_003  # other sampling seeds than the first sample's batches

    def second(batch_index: int, chunk: list) -> list[dict]:
        responses, sampled = generate(model, tokenizer, [row["prompt"] for row in chunk], seed=ctx.seed + offset + batch_index,
                                      chat=chat, return_ids=True, options=[row_options(row) for row in chunk], **decoding)
        return [{"response": r, "tokens": len(ids[1])} for r, ids in zip(responses, sampled)]

    prompts = [row["prompt"] for row in rows]
    again = ctx.map_batches(second, rows, generation["batch_size"])
    outcomes = judge.compare(prompts, [r["response"] for r in records], [r["response"] for r in again],
                             **columns_of(rows))
    return {"outcomes": [float(o) for o in outcomes], "tokens_first": [r["response_tokens"] for r in records],
            "tokens_second": [r["tokens"] for r in again]}


def evaluate_policy(ctx, name, path, rows, judges, reference, generation, heldout_texts, modules,
                    anchor_judge=None) -> tuple[dict, list[dict]]:
    """Generate, judge and measure one policy; returns its held-out numbers and per-prompt records. ``rows``: the
    prompts dataset's rows; judges get their other columns (a ground-truth answer) as keywords.
    ``modules``: the loaded ``evaluate`` modules, ``{"perplexity": module or None, "extra": [(name, module, args)]}``.
    ``anchor_judge``: judge a second sample against the first (``length_anchor``).

    Generation batches are spread over the processes, batch ``b`` sampled with seed ``seed + b``,
    so the records are the same whatever the number of processes."""
    from align.chat_templates import sampling_context
    from align.eval.generation import note_ignored_settings
    from align.eval.kl import kl_from_ids
    from align.eval.sampling import sampler
    from align.models import load_causal_lm

    generate, decoding = sampler(generation, f"stages.{ctx.name}")
    model, tokenizer = load_causal_lm(path, model_kwargs=training.model_kwargs(ctx)), load_policy_tokenizer(ctx, path)
    ref_model, ref_tokenizer = reference
    comparable = same_vocabulary(tokenizer, ref_tokenizer)
    extra = {"kl_note": None if comparable else "undefined: this policy's tokenizer differs from the reference's"}
    chat = bool(ctx.spec.get("chat", True))
    extra["context"] = sampling_context(tokenizer, chat)
    context_verdict(ctx, name, extra["context"])
    if ctx.is_main_process:
        note_ignored_settings(model, f"{ctx.where('policies')}.{name}")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id

    def measure(batch_index: int, rows: list) -> list[dict]:
        chunk = [row["prompt"] for row in rows]
        responses, sampled = generate(model, tokenizer, chunk, seed=ctx.seed + batch_index, chat=chat,
                                      return_ids=True, options=[row_options(row) for row in rows], **decoding)
        columns = {**columns_of(rows), "completion_ids": [ids for _, ids in sampled]}  # a ground truth, for a verifier
        scores = {judge_name: judge.score(chunk, responses, **columns) for judge_name, judge in judges.items()}
        kl = kl_from_ids(model, ref_model, sampled, pad_id=pad_id) if comparable else None
        return [{"policy": name, "prompt": prompt, "response": response,
                 "scores": {j: s[i] for j, s in scores.items()},
                 "kl": kl["k1"][i] if kl else None, "kl_k3": kl["k3"][i] if kl else None,
                 "response_tokens": len(sampled[i][1])}
                for i, (prompt, response) in enumerate(zip(chunk, responses))]

    records = ctx.map_batches(measure, rows, generation["batch_size"])
    for i, record in enumerate(records):
        record["prompt_id"] = i
    if anchor_judge is not None:
        extra["length_anchor"] = length_anchor(ctx, model, tokenizer, rows, records, anchor_judge, generation, chat)
    if heldout_texts:
        ppl = modules["perplexity"].compute(predictions=heldout_texts, model=model, tokenizer=tokenizer)
        extra.update(perplexity=ppl["mean_perplexity"], bits_per_byte=ppl["bits_per_byte"])
    extra["extra_metrics"] = extra_metrics(modules["extra"], [r["response"] for r in records])
    return extra, records


def metric_specs(ctx) -> list[tuple[str, str, dict]]:
    """``metrics:`` entries as (column name, module, compute() arguments)."""
    specs = ctx.spec.get("metrics") or []
    if not isinstance(specs, list):
        raise AlignError(f"{ctx.where('metrics')}: expected a list of evaluate modules, e.g. [distinct_n], got {specs!r}.")
    out = []
    for i, spec in enumerate(specs):
        if isinstance(spec, str):
            spec = {"module": spec}
        if not isinstance(spec, dict) or not isinstance(spec.get("module"), str) or set(spec) - {"module", "args"}:
            raise AlignError(f"{ctx.where(f'metrics[{i}]')}: expected a module name/path or {{module: ..., args: {{...}}}}, "
                             f"got {spec!r}.")
        out.append((Path(spec["module"]).stem, spec["module"], dict(spec.get("args") or {})))
    return out


def load_metric(module: str, where: str):
    """An ``evaluate`` module: one of align's bundled folders by name, a local folder/file, or a hub id."""
    import evaluate

    from align.eval import METRICS_DIR

    bundled = METRICS_DIR / module
    target = str(bundled) if (bundled / f"{module}.py").exists() else module
    try:
        return evaluate.load(target)
    except Exception as e:  # a missing file, a module that does not import, no network for a hub id
        raise AlignError(f"{where}: cannot load the evaluate module {module!r} ({type(e).__name__}: {e}). Give one of "
                         f"align's ({', '.join(p.name for p in METRICS_DIR.iterdir() if p.is_dir())}), a local module "
                         f"folder or .py file, or a hub id when online.") from None


def extra_metrics(modules: list[tuple[str, object, dict]], responses: list[str]) -> dict:
    """Every ``metrics:`` module on one policy's responses; numeric results only, named ``<module>/<key>``."""
    values = {}
    for name, module, args in modules:
        result = module.compute(predictions=responses, **args)
        values.update({f"{name}/{k}": float(v) for k, v in (result or {}).items()
                       if isinstance(v, (int, float)) and not isinstance(v, bool)})
    return values


def summarise(records: list[dict], judge_names: list[str]) -> dict:
    mean = lambda xs: statistics.fmean(xs) if xs else None  # noqa: E731
    kls = [r["kl"] for r in records if r["kl"] is not None]
    return {
        "scores": {j: mean([r["scores"][j] for r in records]) for j in judge_names},
        "score_std": {j: statistics.pstdev([r["scores"][j] for r in records]) for j in judge_names},
        "kl": mean(kls), "kl_k3": mean([r["kl_k3"] for r in records if r["kl_k3"] is not None]),
        "response_length": mean([r["response_tokens"] for r in records]),
    }


def evaluation_table(metrics: dict) -> tuple[list[str], list[list]]:
    """One row per policy: each judge's mean score, the win rate and its interval, KL, perplexity, benchmarks."""
    policies = metrics["policies"]
    judges = list(next(iter(policies.values()))["scores"])
    benchmarks = sorted({k for m in policies.values() for k in (m.get("benchmarks") or {})})
    columns = ["policy", *judges, "win_rate", "ci_low", "ci_high", "kl", "perplexity", "bits_per_byte", *benchmarks]
    rows = [[name, *(m["scores"][j] for j in judges), m["win_rate"]["win_rate"], m["win_rate"].get("ci_low"),
             m["win_rate"].get("ci_high"), m.get("kl"), m.get("perplexity"), m.get("bits_per_byte"),
             *((m.get("benchmarks") or {}).get(b) for b in benchmarks)] for name, m in policies.items()]
    return columns, [["" if v is None else v for v in row] for row in rows]


def log_to_trackers(ctx, metrics: dict) -> None:
    """The evaluation table (and each number as a scalar, ``<stage>/<policy>/<column>``) to the recipe's trackers."""
    from align.tracking import flat_scalars

    columns, rows = evaluation_table(metrics)
    scalars = {}
    for row in rows:
        scalars.update(flat_scalars(f"{ctx.name}/{row[0]}", dict(zip(columns[1:], row[1:]))))
    ctx.tracking.log_summary(ctx.name, scalars, {f"{ctx.name}/table": (columns, rows)})


def run(ctx) -> dict:
    from align.eval.compare_stats import paired_difference
    from align.eval.judge_factory import build_judge
    from align.models import load_causal_lm

    policies, reference_name = policies_and_reference(ctx.spec, f"stages.{ctx.name}")
    judge_names = ctx.stage.judges
    judges = {name: build_judge(name, ctx.recipe.judges[name]) for name in judge_names}
    primary = judge_names[0]
    # every evaluate module loaded once, before sampling: a bad metric fails now, not after minutes of it
    modules = {"extra": [(name, load_metric(module, ctx.where("metrics")), args)
                         for name, module, args in metric_specs(ctx)],
               "perplexity": load_metric("perplexity", ctx.where("heldout")) if "heldout" in ctx.spec else None}
    generation = ctx.options("generation", GENERATION_DEFAULTS)
    anchors = ctx.spec.get("length_anchors", True)  # its type is checked with the stage's TYPES
    prompts_ds = ctx.dataset("prompts", expected=EXPECTED["prompts"])
    rows = prompts_ds.select(range(min(int(ctx.spec.get("limit") or len(prompts_ds)), len(prompts_ds)))).to_list()
    prompts = [row["prompt"] for row in rows]
    heldout = ctx.dataset("heldout", expected=EXPECTED["heldout"])["text"] if "heldout" in ctx.spec else None

    reference = (load_causal_lm(policies[reference_name], model_kwargs=training.model_kwargs(ctx)),
                 load_policy_tokenizer(ctx, policies[reference_name]))
    results, by_policy = {}, {}
    for name, path in policies.items():
        if ctx.is_main_process:
            print(f"{ctx.name}: {name} ({path}) on {len(prompts)} prompts")
        extra, by_policy[name] = evaluate_policy(ctx, name, path, rows, judges, reference, generation, heldout,
                                                 modules, judges[primary] if anchors else None)
        results[name] = {"path": str(path), "kind": policy_kind(path), **extra}
    checked = [r["context"] for r in results.values() if r["context"]["generation_prompt"] is not None]
    if ctx.is_main_process and checked and not any(c["problems"] for c in checked) \
            and (ctx.spec.get("context_check") or "warn") != "off":
        log.info("%s: one context: every policy is sampled after exactly the tokens its replies were trained after",
                 f"stages.{ctx.name}")
    records = [r for i in range(len(prompts)) for r in (by_policy[name][i] for name in policies)]

    n_bootstrap = int(ctx.spec.get("n_bootstrap", 2000))
    judge = judges[primary]
    win_rate_metric = load_metric("win_rate", ctx.where("judges"))

    def win_rate(outcomes: list[float], **kwargs) -> dict:
        return win_rate_metric.compute(predictions=outcomes, **kwargs)

    def outcomes(a: str, b: str) -> list[float]:
        return judge.compare([r["prompt"] for r in by_policy[a]], [r["response"] for r in by_policy[a]],
                             [r["response"] for r in by_policy[b]], **columns_of(rows))

    if ctx.spec.get("benchmarks") is not None and ctx.is_main_process:
        from align.eval.benchmarks import options, run_benchmarks

        bench = options(ctx.spec["benchmarks"], ctx.where("benchmarks"))
        for name, path in policies.items():
            print(f"{ctx.name}: {name}: lm-eval {', '.join(bench['tasks'])}")
            results[name]["benchmarks"] = run_benchmarks(path, bench, where=ctx.where("benchmarks"), seed=ctx.seed)
    names = list(policies)
    # each unordered pair judged once (an LLM judge already asks both orders); b vs a is 1 - (a vs b)
    judged = {(a, b): outcomes(a, b) for i, a in enumerate(names) for b in names[i + 1:]}
    judged.update({(b, a): [1.0 - x for x in o] for (a, b), o in list(judged.items())})
    judged.update({(a, a): [0.5] * len(prompts) for a in names})
    pairwise = [[0.5 if a == b else win_rate(judged[a, b], n_bootstrap=n_bootstrap, seed=ctx.seed)["win_rate"]
                 for b in names] for a in names]
    for name in names:
        results[name].update(summarise(by_policy[name], judge_names))
        if name != reference_name:  # per judge: mean score minus the reference's on the same prompts, with its interval
            results[name]["score_vs_reference"] = {
                j: paired_difference([r["scores"][j] for r in by_policy[name]],
                                     [r["scores"][j] for r in by_policy[reference_name]], n_flips=n_bootstrap,
                                     seed=ctx.seed) for j in judge_names}
        results[name]["win_rate"] = {"vs": reference_name, "judge": primary,
                                     **win_rate(judged[name, reference_name], n_bootstrap=n_bootstrap, seed=ctx.seed)}
    metrics = {"reference": reference_name, "primary_judge": primary, "kl_estimator": KL_ESTIMATOR,
               "n_prompts": len(prompts),
               "decoding": {**generation, "chat": bool(ctx.spec.get("chat", True)),
                            "note": "declared settings only; every checkpoint's own generation_config is ignored"}, "policies": results,
               "judge_stats": {n: j.metrics() for n, j in judges.items() if callable(getattr(j, "metrics", None))},
               "pairwise": {"judge": primary, "policies": names, "win_rate": pairwise,
                            "outcomes": {f"{a} vs {b}": judged[a, b] for i, a in enumerate(names) for b in names[i + 1:]}}}
    if ctx.is_main_process and ctx.tracking:
        log_to_trackers(ctx, metrics)
    if ctx.is_main_process:
        with open(ctx.out_dir / "samples.jsonl", "w") as f:
            for r in records:
                f.write(json.dumps({**r, "prompt": prompt_as_text(r["prompt"])}) + "\n")
        for name in names:
            m = results[name]
            wr = m["win_rate"]
            print(f"{ctx.name}: {name:>8}: {primary} {m['scores'][primary]:+.3f}  win vs {reference_name} "
                  f"{wr['win_rate']:.2f} [{wr['ci_low']:.2f}, {wr['ci_high']:.2f}]  KL {m['kl'] if m['kl'] is None else round(m['kl'], 3)}")
    return metrics
