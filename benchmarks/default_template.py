"""align's default chat template, before and after its generation prompt stopped ending in a space.

Before (up to e22fe89): the default template's generation prompt was ``'Assistant: '``, so every sampling context
ended with a lone space token ('Ġ') while SFT trained ``':' -> 'ĠI'``. After: ``'Assistant:'``, the space belongs to
the reply. The quickstart does not use the default template (align's tokenizer has its own), so the comparison runs
the quickstart with ``chat_template: default`` on the SFT stage (later stages use the template SFT saved).

How the runs were made (2026-12-04, seeds 0, 1, 2; the machine shared with other jobs, one thread per run):

    # recipe: recipes/quickstart.yaml + `chat_template: default` under stages.sft, seed S, output_dir OUT/after[-sS]
    align run after.yaml
    # "before": a checkout of the same commit with DEFAULT_TEMPLATE's two 'Assistant:' strings back to
    # 'Assistant: ' and the reply's `' ' + ... | trim` removed (align/chat_templates.py), output_dir OUT/before[-sS]
    PYTHONPATH=<that checkout> align run before.yaml

Then ``python benchmarks/default_template.py OUT`` prints the table and the across-seeds differences.
"""

from __future__ import annotations

import json
import sys

from align.eval import compare_stats as cs

SEEDS = (0, 1, 2)


def run_dir(root: str, variant: str, seed: int) -> str:
    return f"{root}/{variant}" + ("" if seed == 0 else f"-s{seed}")


def gold_by_prompt(root: str, variant: str, seed: int) -> dict:
    out: dict = {}
    with open(run_dir(root, variant, seed) + "/eval/samples.jsonl") as f:
        for line in f:
            r = json.loads(line)
            out.setdefault(r["policy"], {})[r["prompt_id"]] = r["scores"]["gold"]
    return out


def main(root: str) -> None:
    print("| seed | template | SFT final loss | preference gap (gold) | reward eval acc | gold sft | gold ppo | gold dpo "
          "| win ppo vs sft | win dpo vs sft |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for seed in SEEDS:
        for variant in ("before", "after"):
            r = run_dir(root, variant, seed)
            history = json.load(open(r + "/sft/trainer_state.json"))["log_history"]
            prefs = json.load(open(r + "/preferences/metrics.json"))
            reward = json.load(open(r + "/reward/metrics.json"))
            m = json.load(open(r + "/eval/metrics.json"))["policies"]
            cells = [[h["loss"] for h in history if "loss" in h][-1],
                     prefs["mean_chosen_score"] - prefs["mean_rejected_score"], reward["eval_accuracy"],
                     m["sft"]["scores"]["gold"], m["ppo"]["scores"]["gold"], m["dpo"]["scores"]["gold"],
                     m["ppo"]["win_rate"]["win_rate"], m["dpo"]["win_rate"]["win_rate"]]
            print(f"| {seed} | {variant} | " + " | ".join(f"{x:.3f}" for x in cells) + " |")
    print()
    for policy in ("sft", "ppo", "dpo"):
        after = [gold_by_prompt(root, "after", s)[policy] for s in SEEDS]
        before = [gold_by_prompt(root, "before", s)[policy] for s in SEEDS]
        diffs = [[a[i] - b[i] for i in sorted(a)] for a, b in zip(after, before)]
        r = cs.across_seeds(diffs)
        print(f"{policy}: after - before = {r['estimate']:+.3f} gold [{r['ci_low']:+.3f}, {r['ci_high']:+.3f}], "
              f"p = {r['p_value']:.2f}, {r['df']:.1f} df")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "runs/default_template")
