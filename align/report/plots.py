"""The report's figures (matplotlib, Agg, no display needed). Each function writes one PNG.

Colours follow the stage kind everywhere (PPO red, DPO blue, ...), so a reader can move between
figures without a legend hunt.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from align.report.load import Policy  # noqa: E402

DPI = 120
KIND_COLORS = {"sft": "#555555", "ppo": "#d62728", "dpo": "#1f77b4", "grpo": "#2ca02c", "rloo": "#9467bd"}
STYLE = {"font.size": 11, "axes.titlesize": 12, "axes.labelsize": 11, "legend.fontsize": 9,
         "axes.grid": True, "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False}
KL_LABEL = "KL(π ‖ π_ref), nats per response (k1)"
TRAINING_REWARD = "training reward"  # panel for trajectories whose reward is not one of the judges

# Panels of the training curves by stage kind: title -> logged keys (an "eval_" twin is drawn dashed).
CURVES = {
    "ppo": {"loss": ("loss", "loss/policy_avg", "loss/value_avg"),
            "score": ("objective/scores", "objective/rlhf_reward", "eval/score"), "KL": ("objective/kl", "eval/kl")},
    "dpo": {"loss": ("loss",), "reward accuracy": ("rewards/accuracies",), "reward margin": ("rewards/margins",)},
    "reward": {"loss": ("loss",), "accuracy": ("accuracy",), "margin": ("margin",)},
    "grpo": {"loss": ("loss",), "reward": ("reward",), "KL": ("kl",)},
    "rloo": {"loss": ("loss",), "reward": ("reward",), "KL": ("kl",)},
}
DEFAULT_CURVES = {"loss": ("loss",)}
TRAJECTORY_MARKERS = "os^Dv<>p"  # tells apart the trajectories of several PPO runs (same colour)


def color(kind: str | None) -> str:
    return KIND_COLORS.get(kind or "", "#7f7f7f")


def save(fig, path: Path) -> Path:
    fig.savefig(path, dpi=DPI, bbox_inches="tight", facecolor="white")
    plt.close(fig)
    return path


def mean_interval(policy: Policy, judge: str) -> float | None:
    """Half-width of the normal 95 % interval of the mean score (None when sd or n is unknown)."""
    std = (policy.metrics.get("score_std") or {}).get(judge)
    return 1.96 * std / math.sqrt(policy.n) if std is not None and policy.n else None


def final_points(policies: list[Policy], judge: str) -> list[tuple[float, float, float | None, str | None, str]]:
    """(KL, score, interval, kind, label) per position; policies at the same point share one label."""
    points: dict = {}
    for p in policies:
        kl, score = p.metrics.get("kl"), (p.metrics.get("scores") or {}).get(judge)
        if kl is not None and score is not None:
            key = (round(kl, 9), round(score, 9))
            _, _, interval, kind, labels = points.setdefault(key, (kl, score, mean_interval(p, judge), p.kind, []))
            labels.append(p.name)
    return [(kl, score, interval, kind, ", ".join(labels)) for kl, score, interval, kind, labels in points.values()]


LABEL_OFFSETS = [(6, 6, "left"), (6, -16, "left"), (-6, 6, "right"), (-6, -16, "right"),
                 (6, 20, "left"), (6, -30, "left"), (-6, 20, "right"), (-6, -30, "right")]


def label_points(ax, points: list[tuple[float, float, str]]) -> None:
    """Label each point at the first offset where its label stays inside the axes and clear of the
    labels already placed (a sweep crowds points). Call once the layout is final."""
    renderer = ax.figure.canvas.get_renderer()
    placed = []
    for x, y, text in sorted(points):
        for dx, dy, ha in LABEL_OFFSETS:
            label = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), ha=ha, fontsize=10)
            box = label.get_window_extent(renderer)
            fits = ax.bbox.contains(box.x0, box.y0) and ax.bbox.contains(box.x1, box.y1)
            if (fits and not any(box.overlaps(other) for other in placed)) or (dx, dy, ha) == LABEL_OFFSETS[-1]:
                placed.append(box)
                break
            label.remove()


def frontier(policies: list[Policy], judges: list[str], path: Path, title: str, frontiers: dict | None = None) -> Path:
    """Score vs KL to the reference, one panel per judge (primary first): each final policy as a
    labelled point with the 95 % interval of its mean score, and PPO's training trajectory on the
    panel of the judge it was trained on. Reading across at equal KL compares RLHF with DPO.
    ``frontiers`` ({kind: [(kl, score), ...]}, from a sweep) are drawn as each method's frontier on the primary panel."""
    panels = list(judges)
    if any(p.trajectory and p.trained_on not in judges for p in policies):
        panels.append(TRAINING_REWARD)
    kinds = [plt.Line2D([], [], marker="o", linestyle="", color=color(k), markeredgecolor="black", label=k)
             for k in dict.fromkeys(p.kind for p in policies)]
    with plt.rc_context(STYLE):
        ncols = min(len(panels), 2)  # wider pages shrink the figure until the text is unreadable
        nrows = math.ceil(len(panels) / ncols)
        fig, axes = plt.subplots(nrows, ncols, figsize=(6.4 * ncols, 5.6 * nrows), squeeze=False)
        axes = axes.ravel()
        for ax in axes[len(panels):]:
            ax.axis("off")
        labels = []
        for ax, judge in zip(axes, panels):
            for i, p in enumerate(p for p in policies if p.trajectory):
                if p.trained_on == judge or (judge == TRAINING_REWARD and p.trained_on not in judges):
                    steps, kls, scores = zip(*p.trajectory)
                    ax.plot(kls, scores, "-", marker=TRAJECTORY_MARKERS[i % len(TRAJECTORY_MARKERS)], color=color(p.kind),
                            alpha=0.45, markersize=4, linewidth=1.5,
                            label=f"{p.name} during training (steps {steps[0]}–{steps[-1]})")
            for kind, line in (frontiers or {}).items() if judge == judges[0] else ():
                ax.plot(*zip(*line), "--", color=color(kind), linewidth=2, alpha=0.8, label=f"{kind} frontier")
            points = final_points(policies, judge) if judge != TRAINING_REWARD else []
            for kl, score, interval, kind, label in points:
                ax.errorbar([kl], [score], yerr=None if interval is None else [interval], fmt="o", markersize=8,
                            color=color(kind), capsize=3, markeredgecolor="black", zorder=3)
                labels.append((ax, (kl, score, label)))
            ax.margins(x=0.12, y=0.12)
            primary = " (primary judge)" if judge == judges[0] else ""
            ax.set_title(f"{judge}{primary}" if judge != TRAINING_REWARD else "PPO training reward (eval/score)")
            ax.set_xlabel(KL_LABEL)
            ax.set_ylabel(f"mean {judge} score" if judge != TRAINING_REWARD else "eval/score")
            trajectories = ax.get_legend_handles_labels()[0]
            ax.legend(handles=(kinds if points else []) + trajectories, loc="upper center", bbox_to_anchor=(0.5, -0.16),
                      ncol=2 if trajectories else 3, frameon=False)
        fig.suptitle(title)
        fig.tight_layout()
        fig.canvas.draw()  # final limits and layout, so label_points measures real positions
        for ax in axes:
            label_points(ax, [point for owner, point in labels if owner is ax])
        return save(fig, path)


def series(history: list[dict], key: str) -> tuple[list, list]:
    points = [(h["step"], h[key]) for h in history if h.get(key) is not None and "step" in h]
    return [s for s, _ in points], [v for _, v in points]


def curve_panels(kind: str | None, history: list[dict]) -> list[tuple[str, list[tuple[str, list, list, bool]]]]:
    """(panel title, [(key, steps, values, is_eval)]) for the panels of this kind that have data."""
    panels = []
    for title, keys in CURVES.get(kind or "", DEFAULT_CURVES).items():
        lines = [(k, *series(history, k), k.startswith("eval")) for k in keys]
        lines += [(f"eval_{k}", *series(history, f"eval_{k}"), True) for k in keys]
        lines = [line for line in lines if line[1]]
        if lines:
            panels.append((title, lines))
    return panels


def training_curves(curves: dict[str, tuple[str | None, list[dict]]], path: Path) -> Path | None:
    """Small multiples: one row per training stage, one panel per logged quantity; None if nothing was logged."""
    rows = [(stage, kind, panels) for stage, (kind, history) in curves.items()
            if (panels := curve_panels(kind, history))]
    if not rows:
        return None
    ncols = max(len(panels) for _, _, panels in rows)
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(len(rows), ncols, figsize=(4.6 * ncols, 3.2 * len(rows)), squeeze=False)
        for r, (stage, kind, panels) in enumerate(rows):
            for c in range(ncols):
                ax = axes[r][c]
                if c >= len(panels):
                    ax.axis("off")
                    continue
                title, lines = panels[c]
                for key, steps, values, is_eval in lines:
                    ax.plot(steps, values, "--o" if is_eval else "-", markersize=3, label=key,
                            color=color(kind) if len(lines) == 1 else None)
                ax.set_title(f"{stage}: {title}" if stage == kind else f"{stage} ({kind or '?'}): {title}")
                ax.set_xlabel("step")
                if len(lines) > 1:
                    ax.legend()
        fig.tight_layout()
        return save(fig, path)


def win_rates(policies: list[Policy], reference: str, judge: str, path: Path) -> Path | None:
    """Win rate of each policy against the reference with its bootstrap 95 % interval; 0.5 = no better."""
    bars = [(p, p.metrics["win_rate"]) for p in policies
            if not p.is_reference and p.metrics.get("win_rate") and p.metrics["win_rate"].get("win_rate") is not None]
    if not bars:
        return None
    with plt.rc_context(STYLE):
        fig, ax = plt.subplots(figsize=(max(4.5, 1.3 * len(bars) + 2), 4.2))
        x = range(len(bars))
        rates = [w["win_rate"] for _, w in bars]
        lower = [w["win_rate"] - w["ci_low"] if w.get("ci_low") is not None else 0 for _, w in bars]
        upper = [w["ci_high"] - w["win_rate"] if w.get("ci_high") is not None else 0 for _, w in bars]
        ax.bar(x, rates, yerr=[lower, upper], capsize=6, color=[color(p.kind) for p, _ in bars], alpha=0.85)
        for i, rate in enumerate(rates):
            ax.annotate(f"{rate:.2f}", (i, rate + upper[i]), textcoords="offset points", xytext=(0, 4), ha="center")
        ax.axhline(0.5, linestyle="--", color="black", linewidth=1)
        ax.set_xticks(list(x), [p.name for p, _ in bars], rotation=30 if len(bars) > 4 else 0,
                      ha="right" if len(bars) > 4 else "center")
        ax.set_ylim(0, 1.08)
        ax.set_ylabel(f"win rate vs {reference} ({judge} judge)")
        ax.set_title(f"Win rate vs {reference}\n(ties count half; bars: 95 % bootstrap interval)", fontsize=11)
        fig.tight_layout()
        return save(fig, path)
