"""PPO on llama-small: one process vs two data-parallel vs two FSDP2-sharded, and memory per model setup.

    python benchmarks/ppo_scaling.py                 # both tables (about 4 minutes on 2 CPU cores)
    python benchmarks/ppo_scaling.py --only scaling  # or --only memory

Scaling: the same global batch (16 rollouts of up to 32 tokens per iteration, 2 minibatches, 2 epochs) on
1 process, on 2 processes with DDP, and on 2 processes with policy and critic sharded by FSDP2 (the
environment `accelerate launch --config_file recipes/accelerate/fsdp2.yaml` exports). Reports seconds per
iteration (mean of iterations 2-4), the peak resident memory of the largest process, and the bytes of
trainable weights + AdamW states each process holds.

Memory: one process, three ways to hold PPO's four models (policy, reference, critic, reward model):
full policy and full critic; LoRA policy and full critic; LoRA policy and LoRA critic. Bytes are counted
per distinct tensor storage, so weights two roles share are counted once, under the first role.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

WORKER = textwrap.dedent('''
    import json, os, resource, sys, time
    import datasets, torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from align.ppo import PPOConfig, PPOTrainer

    model_dir, out, setup = sys.argv[1], sys.argv[2], sys.argv[3]
    world = int(os.environ.get("WORLD_SIZE", "1"))
    torch.set_num_threads(max(1, 2 // world))
    tok = AutoTokenizer.from_pretrained(model_dir)
    prompts = datasets.Dataset.from_dict({"prompt": [f"Write a review of product {i}." for i in range(64)]})
    lora = LoraConfig(r=16, lora_alpha=32, target_modules="all-linear")
    reward_model = AutoModelForSequenceClassification.from_pretrained(model_dir + "/rm")
    args = PPOConfig(output_dir=out, max_steps=4, rollout_batch_size=16 // world, num_mini_batches=2, ppo_epochs=2,
                     per_device_train_batch_size=8 // world, max_new_tokens=32, learning_rate=1e-4, eval_steps=None,
                     save_strategy="no", use_cpu=True, report_to="none", disable_tqdm=True, seed=0)
    t = PPOTrainer(AutoModelForCausalLM.from_pretrained(model_dir), reward_model=reward_model, processing_class=tok,
                   args=args, train_dataset=prompts, peft_config=lora if setup != "full" else None,
                   value_peft_config=lora if setup == "lora_critic" else None)
    t.train()
    iterations = [h for h in t.state.log_history if "time/generation" in h][1:]
    seconds = sum(h["time/generation"] + h["time/scoring"] + h["time/optimization"] for h in iterations) / len(iterations)

    def storage(x):  # this process's storage (its shard, for a DTensor)
        return (x.to_local() if hasattr(x, "to_local") else x).untyped_storage()

    def local_bytes(tensors):
        seen, total = set(), 0
        for x in tensors:
            if storage(x).data_ptr() not in seen:
                seen.add(storage(x).data_ptr())
                total += storage(x).nbytes()
        return total

    optimizer = getattr(t.optimizer, "optimizer", t.optimizer)
    states = [v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v) and v.dim()]
    trainable = [p for p in t.model.parameters() if p.requires_grad]
    roles, seen, role_bytes = {"policy": t.policy, "reference": t.ref_model, "critic": t.value_model,
                               "reward model": t.judge.model}, set(), {}
    for role, module in roles.items():
        tensors = [p for p in module.parameters() if storage(p).data_ptr() not in seen] if module is not None else []
        role_bytes[role] = local_bytes(tensors)
        seen |= {storage(p).data_ptr() for p in tensors}
    result = {"world": world, "sharded": t.sharded, "seconds_per_iteration": seconds,
              "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
              "trainable_mib": local_bytes(trainable) / 2**20, "adam_mib": local_bytes(states) / 2**20,
              "roles_mib": {k: v / 2**20 for k, v in role_bytes.items()},
              "trainable_params": sum(p.numel() for p in trainable)}
    json.dump(result, open(f"{out}/result_{int(os.environ.get('RANK', '0'))}.json", "w"))
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
''')
FSDP2_ENV = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_RESHARD_AFTER_FORWARD": "true"}


def build_model(folder: Path) -> None:
    """llama-small (5.2 M parameters with a 4k vocabulary) from random init, a tokenizer trained on the builtin
    reviews, and a reward model of the same architecture (random head: only its memory is measured)."""
    from transformers import AutoModelForSequenceClassification

    from align.data.builtin import load_builtin
    from align.models import build_model as build
    from align.stages.tokenizer import train_bpe

    texts = load_builtin("reviews", "pretrain", size=2000)["text"]
    tokenizer = train_bpe(texts, vocab_size=4096)
    build({"preset": "llama-small"}, tokenizer, seed=0).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    rm = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1)
    rm.config.pad_token_id = tokenizer.pad_token_id
    rm.save_pretrained(folder / "rm")


def launch(script: Path, model: Path, out: Path, setup: str, processes: int, sharded: bool) -> list[dict]:
    out.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(max(1, 2 // processes)),
           **(FSDP2_ENV if sharded else {})}
    command = [sys.executable, str(script), str(model), str(out), setup] if processes == 1 else \
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(processes), str(script), str(model),
         str(out), setup]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-4000:]}")
    return [json.loads((out / f"result_{r}.json").read_text()) for r in range(processes)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("scaling", "memory"))
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        script = tmp / "worker.py"
        script.write_text(WORKER)
        build_model(tmp / "model")
        if options.only != "memory":
            print("| setup | processes | s / iteration | peak RSS, largest process (MiB) | trainable weights + AdamW per process (MiB) |")
            print("|---|---|---|---|---|")
            for name, processes, sharded in (("1 process", 1, False), ("2 data-parallel", 2, False),
                                             ("2 FSDP2-sharded", 2, True)):
                ranks = launch(script, tmp / "model", tmp / name.replace(" ", "_"), "full", processes, sharded)
                print(f"| {name} (full policy and critic) | {processes} | {max(r['seconds_per_iteration'] for r in ranks):.2f} | "
                      f"{max(r['peak_rss_mib'] for r in ranks):.0f} | "
                      f"{max(r['trainable_mib'] + r['adam_mib'] for r in ranks):.1f} |", flush=True)
        if options.only != "scaling":
            print("\n| setup | policy | reference | critic | reward model | trainable params | AdamW states | peak RSS |")
            print("|---|---|---|---|---|---|---|---|")
            for setup, label in (("full", "full policy, full critic"), ("lora_policy", "LoRA policy, full critic"),
                                 ("lora_critic", "LoRA policy, LoRA critic")):
                r = launch(script, tmp / "model", tmp / setup, setup, 1, False)[0]
                roles = " | ".join(f"{r['roles_mib'][k]:.1f} MiB" if r["roles_mib"][k] else "shared"
                                   for k in ("policy", "reference", "critic", "reward model"))
                print(f"| {label} | {roles} | {r['trainable_params'] / 1e6:.2f} M | {r['adam_mib']:.1f} MiB | "
                      f"{r['peak_rss_mib']:.0f} MiB |", flush=True)


if __name__ == "__main__":
    main()
