"""One rank of the tensor-parallel test: ``torchrun --nproc_per_node 2 tp_worker.py MODEL ADAPTER OUT_DIR``.

Loads MODEL and the LoRA ADAPTER through align (tensor parallelism chosen by PARALLELISM_CONFIG_TP_SIZE, as
``accelerate launch`` sets it), records how the weights are sharded, logits on a fixed padded batch and
greedy generations, and writes them to OUT_DIR/rank<R>.pt.
"""

import os
import sys

import torch
import torch.distributed as dist

from align.eval.generation import generate
from align.models import load_causal_lm, load_tokenizer

PROMPTS = ["the cat is very good", "a phone", "battery and screen were not quite great but really slow"]


def fixed_batch():
    ids = torch.tensor([[0, 0, 5, 17, 42, 99, 7], [3, 250, 11, 64, 128, 9, 200]])
    return ids, (ids != 0).long()


def sharding(model) -> dict:
    """Local shape and placements of a column-wise and a row-wise sharded weight."""
    from torch.distributed.tensor import DTensor

    layer = model.model.layers[0]
    out = {}
    for name, weight in (("q_proj", layer.self_attn.q_proj.weight), ("down_proj", layer.mlp.down_proj.weight)):
        out[name] = {"dtensor": isinstance(weight, DTensor), "global": tuple(weight.shape),
                     "local": tuple(weight.to_local().shape) if isinstance(weight, DTensor) else tuple(weight.shape),
                     "placements": str(getattr(weight, "placements", None))}
    return out


def measure(path) -> dict:
    model, tokenizer = load_causal_lm(path), load_tokenizer(path)
    ids, mask = fixed_batch()
    with torch.inference_mode():
        logits = model(input_ids=ids, attention_mask=mask).logits
    return {"sharding": sharding(model), "logits": logits.full_tensor() if hasattr(logits, "full_tensor") else logits,
            "greedy": generate(model, tokenizer, PROMPTS, greedy=True, max_new_tokens=12)}


def main() -> None:
    model_dir, adapter_dir, out_dir = sys.argv[1:4]
    try:
        result = {"model": measure(model_dir), "adapter": measure(adapter_dir),
                  "world_size": dist.get_world_size()}
        torch.save(result, os.path.join(out_dir, f"rank{dist.get_rank()}.pt"))
    finally:
        if dist.is_initialized():  # a gloo rank can abort at interpreter exit otherwise
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
