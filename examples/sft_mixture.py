"""SFT on a dataset mixture: the builtin review chats and a ShareGPT file of your own, 3 : 1, in one dataset spec.

    python examples/sft_mixture.py runs/quickstart/pretrain                      # align's model: align's defaults
    python examples/sft_mixture.py HuggingFaceTB/SmolLM2-135M-Instruct --sharegpt chats.jsonl   # TRL's defaults

Each source of ``mixture:`` is a dataset spec with its own ``convert:``; ``fraction`` is its share of the mixture
(TRL's ``DatasetConfig.fraction``). Without ``--sharegpt`` the script writes a small ShareGPT file to show the
conversion. The stage folder's data card lists the mixture: sources, fractions, rows available and used.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def write_sharegpt(path: Path, n: int = 64) -> Path:
    """A few ShareGPT-shaped chats ({from, value} turns), as exported by many chat datasets."""
    rows = [{"conversations": [{"from": "human", "value": f"Write a one-line review of gadget number {i}."},
                               {"from": "gpt", "value": f"Gadget {i} works well and the battery lasts."}]}
            for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def main(argv=None) -> Path:
    from align import run_recipe
    from align.recipe import build_recipe

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model", help="the model to fine-tune: a model folder (e.g. a pretrain stage) or a hub id")
    parser.add_argument("--sharegpt", help="a ShareGPT .jsonl file (default: a small generated one)")
    parser.add_argument("--chats", type=int, default=96, help="builtin review chats to draw from")
    parser.add_argument("--max-steps", type=int, default=4)
    parser.add_argument("--output-dir", default="runs/sft_mixture")
    args = parser.parse_args(argv)

    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    sharegpt = args.sharegpt or str(write_sharegpt(out / "sharegpt.jsonl"))
    recipe = build_recipe({
        "name": "sft_mixture", "output_dir": str(out),
        "datasets": {"chat": {"mixture": [
            {"builtin": "reviews", "split": "sft", "size": args.chats, "fraction": 0.75},
            {"path": sharegpt, "convert": "sharegpt", "fraction": 0.25},
        ]}},
        "stages": {"sft": {"kind": "sft", "model": args.model, "dataset": "chat", "lora": {"r": 4, "lora_alpha": 8},
                           "args": {"max_steps": args.max_steps, "per_device_train_batch_size": 8,
                                    "max_length": 128}}},
    })
    run_recipe(recipe, echo=print)
    card = out / "sft" / "data_card_chat.md"
    print(card.read_text().split("## Mixture", 1)[1].split("##", 1)[0].strip())
    return card


if __name__ == "__main__":
    main()
