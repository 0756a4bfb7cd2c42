"""The report of one run: every policy side by side (table, reward-vs-KL, win rates, training curves, samples)."""

from __future__ import annotations

from pathlib import Path

from align.report import plots
from align.report.load import Evaluation, Policy, load_evaluation
from align.report.page import Heading, Image, Table, Text, write_pages
from align.report.tables import pairwise_table, policy_table, sample_tables
from align.report.verdict import decide
from align.report.verdict import table as verdict_table

TRAJECTORY_NOTE = ("Lines: PPO's periodic evaluations during training (eval/kl, eval/score from its trainer_state.json; "
                   "its own eval prompts and decoding), drawn on the panel of the judge it was trained on{where}. "
                   "Points: the final policies as measured by the evaluate stage, with the 95 % interval of the mean score.")


METHOD_NOTE = ("Paired difference: same prompts, same judge; a sign-flip permutation test and the interval that inverts "
               "it. Head to head and win rates: bootstrap over prompts, interval and p from the same resamples. "
               "Length-controlled win rate: AlpacaEval 2's logistic regression of the outcome on the length difference, "
               "read at zero difference, its length slope anchored by each policy judged against a second sample of "
               "itself. Equal KL: each method's frontier fitted through its sweep points and the reference (Gao et al. "
               "2023), compared over the KLs both reach, recomputed in every resample; refused when a method has one "
               "point or the ranges meet in too few resamples. Holm's correction over the tests of the sentence. "
               "One run per method compares checkpoints; seeds compare methods.")


def context_text(evaluation: Evaluation) -> str:
    m = evaluation.metrics
    decoding = ", ".join(f"{k}={v}" for k, v in (m.get("decoding") or {}).items()) or "not recorded"
    return (f"Evaluate stage: {evaluation.eval_dir}. {m.get('n_prompts', '?')} held-out prompts, the same for every "
            f"policy; decoding: {decoding}. Reference policy: {m['reference']}; primary judge: {m['primary_judge']}."
            + sampling_text(evaluation.policies))


def sampling_text(policies: list[Policy]) -> str:
    """Which prompt each policy was sampled after, and whether that is the context it was trained in."""
    groups: dict[tuple, list[str]] = {}
    for p in policies:
        c = p.metrics.get("context")
        if c:
            groups.setdefault((c.get("generation_prompt"), c.get("source"), bool(c.get("problems"))), []).append(p.name)
    if not groups:
        return ""
    source_words = {"template": "the chat template's generation prompt",
                    "trained": "the prompt SFT trained replies after (generation_prompt: trained)"}
    parts = []
    for (opener, source, differs), names in groups.items():
        what = f"{opener!r}, {source_words.get(source, source)}" if opener is not None else source
        check = ("; NOT the context it was trained in (see the evaluate stage's log)" if differs
                 else "; the context SFT, DPO and the reward model trained in")
        parts.append(f"{', '.join(names)} after {what}{check}")
    return " Sampled after the prompt plus: " + "; ".join(parts) + "."


def results_blocks(policies: list[Policy], judges: list[str], metrics: dict) -> list:
    """The numbers table and what its columns mean."""
    blocks = [Table(*policy_table(policies, judges, metrics["reference"])),
              Text(f"Scores: mean over prompts (sd = spread over prompts); after it, the difference from "
                   f"{metrics['reference']} on the same prompts with a paired sign-flip 95 % interval (* when it "
                   f"excludes 0). Win rate under the {metrics['primary_judge']} "
                   f"judge, ties count half, bootstrap 95 % interval. KL estimator: {metrics.get('kl_estimator') or 'not recorded'}. "
                   "Perplexity and bits per byte on held-out text (bits per byte compare across tokenizers).")]
    notes = [f"{p.name}: {p.metrics['kl_note']}" for p in policies if p.metrics.get("kl") is None and p.metrics.get("kl_note")]
    if notes:
        blocks.append(Text("KL not computed — " + "; ".join(notes)))
    return blocks


def benchmark_table(policies: list[Policy]) -> tuple[list[str], list[list[str]]] | None:
    """Policies x benchmark metrics (``task/metric``), value ± stderr where the harness gave one."""
    names = sorted({k for p in policies for k in (p.metrics.get("benchmarks") or {}) if not k.endswith("_stderr")})
    if not names:
        return None
    def cell(values: dict, key: str) -> str:
        if values.get(key) is None:
            return ""
        err = values.get(f"{key}_stderr")
        return f"{values[key]:.3f}" + (f" ± {err:.3f}" if isinstance(err, (int, float)) else "")
    return ["policy", *names], [[p.name, *(cell(p.metrics.get("benchmarks") or {}, n) for n in names)] for p in policies]


def figure_blocks(policies: list[Policy], judges: list[str], reference: str, out_dir: Path, title: str,
                  frontiers: dict | None = None) -> list:
    blocks = [Heading("Reward vs KL to the reference"),
              Image(plots.frontier(policies, judges, out_dir / "reward_vs_kl.png", title, frontiers), "reward vs KL")]
    if any(p.trajectory for p in policies):
        unknown = any(p.trajectory and p.trained_on not in judges for p in policies)
        blocks.append(Text(TRAJECTORY_NOTE.format(
            where=" (or on a panel of its own when that judge is not known or not evaluated)" if unknown else "")))
    bars = plots.win_rates(policies, reference, judges[0], out_dir / "win_rates.png")
    if bars:
        blocks += [Heading(f"Win rate against {reference}"), Image(bars, "win rates")]
    return blocks


def build_report(source: Evaluation | str | Path, out_dir: str | Path, *, title: str | None = None,
                 samples: int = 5, shipping: list[str] | None = None) -> dict:
    """Write report.md, report.html and the PNGs for an evaluate stage (its folder, or loaded with
    ``load_evaluation`` and its PPO policies' ``trained_on`` set so their trajectories join that judge's panel).
    ``shipping``: lines on where the run was tracked and where its models were exported."""
    evaluation = source if isinstance(source, Evaluation) else load_evaluation(source)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    m, judges, policies = evaluation.metrics, evaluation.judges, evaluation.policies
    title = title or f"{evaluation.eval_dir.parent.name}: policies compared"
    decided = decide(evaluation, seed=0)
    blocks = [Text(context_text(evaluation))]
    if decided:
        blocks += [Heading("Verdict: PPO vs DPO"), Text(decided["sentence"]), Table(*verdict_table(decided)),
                   Text(METHOD_NOTE)]
    blocks += [Heading("Results"), *results_blocks(policies, judges, m)]
    bench = benchmark_table(policies)
    if bench:
        blocks += [Heading("Benchmarks", 3), Table(*bench),
                   Text("lm-evaluation-harness tasks on every policy (the evaluate stage's benchmarks:), accuracy with its "
                        "standard error: what alignment cost or gained in capability.")]
    pairwise = pairwise_table(m.get("pairwise"))
    if pairwise:
        blocks += [Heading(f"Pairwise win rates ({m['pairwise'].get('judge', m['primary_judge'])} judge)", 3), Table(*pairwise)]
    if shipping:
        blocks += [Heading("Tracking and export", 3), *(Text(line) for line in shipping)]
    blocks += figure_blocks(policies, judges, m["reference"], out_dir, title,
                            frontiers=(decided or {}).get("frontiers"))
    curves = plots.training_curves(evaluation.curves, out_dir / "training_curves.png")
    if curves:
        blocks += [Heading("Training curves"), Image(curves, "training curves"),
                   Text("Solid: training logs; dashed with markers: evaluations during training.")]
    shown = sample_tables(evaluation.samples, [p.name for p in policies], samples)
    if shown:
        blocks += [Heading("Samples"), Text(f"The first {len(shown)} evaluation prompts (not selected), every policy's response and its scores.")]
        for i, (prompt, names, rows) in enumerate(shown):
            blocks += [Heading(f"Prompt {i + 1}", 3), Text(prompt), Table(names, rows)]
    md, html = write_pages(title, blocks, out_dir)
    figures = sorted(str(b.path) for b in blocks if isinstance(b, Image))
    return {"report_md": str(md), "report_html": str(html), "figures": figures}
