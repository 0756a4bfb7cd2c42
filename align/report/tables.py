"""Pure shaping of evaluate numbers and samples into table rows (strings), for markdown and HTML alike."""

from __future__ import annotations

from align.report.load import Policy

DASH = "—"  # not computed (null in metrics.json)


def fmt(value, digits: int = 3) -> str:
    return DASH if value is None else f"{value:.{digits}f}"


def score_cell(metrics: dict, judge: str) -> str:
    """Mean score (sd), then the paired difference from the reference with its 95 % interval when evaluate gave one
    (for a verifier scoring 0/1: the accuracy and its gain)."""
    mean = (metrics.get("scores") or {}).get(judge)
    std = (metrics.get("score_std") or {}).get(judge)
    cell = fmt(mean) + (f" (sd {std:.2f})" if mean is not None and std is not None else "")
    paired = (metrics.get("score_vs_reference") or {}).get(judge)
    if paired and paired.get("difference") is not None:
        cell += (f"; {paired['difference']:+.3f} [{paired['ci_low']:+.3f}, {paired['ci_high']:+.3f}]"
                 f"{' *' if paired.get('significant') else ''}")
    return cell


def win_rate_cell(win: dict | None) -> str:
    if not win or win.get("win_rate") is None:
        return DASH
    cell = f"{win['win_rate']:.2f} [{fmt(win.get('ci_low'), 2)}, {fmt(win.get('ci_high'), 2)}]"
    if win.get("n"):
        cell += f" ({win.get('wins')}W/{win.get('ties')}T/{win.get('losses')}L of {win['n']})"
    return cell


def policy_table(policies: list[Policy], judges: list[str], reference: str) -> tuple[list[str], list[list[str]]]:
    """Every policy's numbers: score per judge (primary first; with the paired difference from the reference and its
    95 % interval, * when it excludes 0), win rate with its 95 % interval, KL, length, perplexity."""
    extra = list(dict.fromkeys(k for p in policies for k in (p.metrics.get("extra_metrics") or {})))
    headers = ["policy", "kind", *[f"{j} score" + (" (primary)" if i == 0 else "") for i, j in enumerate(judges)],
               f"win rate vs {reference} [95 % CI]", "KL k1", "KL k3", "length (tokens)", "perplexity", "bits/byte",
               *extra]
    rows = []
    for p in policies:
        m = p.metrics
        rows.append([p.name, p.kind or DASH, *[score_cell(m, j) for j in judges], win_rate_cell(m.get("win_rate")),
                     fmt(m.get("kl")), fmt(m.get("kl_k3")), fmt(m.get("response_length"), 1),
                     fmt(m.get("perplexity"), 2), fmt(m.get("bits_per_byte")),
                     *[fmt((m.get("extra_metrics") or {}).get(k)) for k in extra]])
    return headers, rows


def pairwise_table(pairwise: dict | None) -> tuple[list[str], list[list[str]]] | None:
    """Row i, column j: how often policy i beats policy j."""
    if not pairwise or not pairwise.get("policies") or not pairwise.get("win_rate"):
        return None
    names = pairwise["policies"]
    return (["row beats column", *names],
            [[a, *[fmt(x, 2) for x in row]] for a, row in zip(names, pairwise["win_rate"])])


def scores_text(scores: dict | None) -> str:
    return ", ".join(f"{j} {fmt(s, 2)}" for j, s in (scores or {}).items()) or DASH


def sample_tables(samples: list[dict], policies: list[str], n: int) -> list[tuple[str, list[str], list[list[str]]]]:
    """The first ``n`` prompts (not hand-picked): (prompt, header of policies, [responses row, scores row])."""
    by_prompt: dict = {}
    for row in samples:
        by_prompt.setdefault(row["prompt_id"], {"prompt": row["prompt"]})[row["policy"]] = row
    out = []
    for entry in list(by_prompt.values())[:n]:
        names = [p for p in policies if p in entry]
        out.append((entry["prompt"], names, [[entry[p]["response"] for p in names],
                                             [scores_text(entry[p].get("scores")) for p in names]]))
    return out
