"""PPO with the policy and critic sharded by FSDP2 over two gloo ranks (torchrun on CPU), launched with the
environment ``accelerate launch --config_file recipes/accelerate/fsdp2.yaml`` exports.

The sharded run must (1) really shard: every trainable parameter is a DTensor holding about half of it per
rank; (2) make the same first update as the unsharded two-rank (DDP) run, which samples the same responses;
(3) resume after a kill to the weights of the uninterrupted run; (4) save ordinary model folders."""

import json
import subprocess
import sys
import textwrap

import pytest

from align.testing import cpu_ranks_env
from tests.ppo.workers import CAT_REWARD_AND_KILL

SCRIPT = textwrap.dedent('''
    import hashlib, json, sys
    import datasets, torch
    from torch.distributed.tensor import DTensor
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from align.ppo import PPOConfig, PPOTrainer

    torch.set_num_threads(1)
    model_dir, out, mode, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
''') + CAT_REWARD_AND_KILL + textwrap.dedent('''

    args = PPOConfig(output_dir=out, max_steps=steps, rollout_batch_size=8, num_mini_batches=2, ppo_epochs=2,
                     per_device_train_batch_size=2, max_new_tokens=8, learning_rate=3e-3, lr_scheduler_type="constant",
                     kl_coef=0.05, eval_steps=2, eval_prompts=8, save_steps=2, use_cpu=True, report_to="none",
                     disable_tqdm=True, seed=0)
    prompts = datasets.Dataset.from_dict({"prompt": ["the cat", "a dog is", "my phone", "the lamp was very"] * 8})
    t = PPOTrainer(AutoModelForCausalLM.from_pretrained(model_dir), reward_funcs=[reward], processing_class=tok,
                   args=args, train_dataset=prompts, callbacks=[DieAt3()])
    params = [p for p in t.model.parameters() if p.requires_grad]
    shards = {"dtensor": all(isinstance(p, DTensor) for p in params), "numel": sum(p.numel() for p in params),
              "local_numel": sum((p.to_local() if isinstance(p, DTensor) else p).numel() for p in params)}
    t.train(resume_from_checkpoint=True if mode == "resume" else None)
    t.save_model(f"{out}/final_{mode}")  # every rank calls it: the sharded weights are gathered
    full = t._gather_full_weights() if t.sharded else t.accelerator.unwrap_model(t.model).state_dict()
    logs = [h for h in t.state.log_history if "objective/kl" in h]
    if t.accelerator.is_main_process:
        torch.save({k: v.detach().cpu() for k, v in full.items()}, f"{out}/weights_{mode}.pt")
    json.dump({"sharded": t.sharded, "shards": shards, "logs": logs, "prompts": t.prompts_seen,
               "eval": [h["eval/score"] for h in t.state.log_history if "eval/score" in h]},
              open(f"{out}/rank{t.accelerator.process_index}_{mode}.json", "w"))
    t.accelerator.wait_for_everyone()
    torch.distributed.destroy_process_group()
''')
FSDP2_ENV = {"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "2", "FSDP_RESHARD_AFTER_FORWARD": "true",
             "FSDP_CPU_RAM_EFFICIENT_LOADING": "true"}  # as recipes/accelerate/fsdp2.yaml exports them


def launch(tmp_path, model_dir, out, mode, steps, sharded=True):
    script = tmp_path / "run_ppo.py"
    script.write_text(SCRIPT)
    env = cpu_ranks_env(**(FSDP2_ENV if sharded else {}))
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script),
                           str(model_dir), str(out), mode, str(steps)], capture_output=True, text=True, env=env,
                          timeout=300)
    if mode != "kill":  # a killed job may exit non-zero (gloo threads die with it), as a real kill would
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    return [json.loads((out / f"rank{r}_{mode}.json").read_text()) for r in (0, 1)] if mode != "kill" else None


@pytest.mark.slow
def test_fsdp2_ppo_shards_matches_the_unsharded_update_and_resumes(tmp_path, tiny_model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    ddp = launch(tmp_path, tiny_model_dir, tmp_path / "ddp", "full", steps=4, sharded=False)
    fsdp = launch(tmp_path, tiny_model_dir, tmp_path / "fsdp", "full", steps=4)
    assert not ddp[0]["sharded"] and fsdp[0]["sharded"] and fsdp[1]["sharded"]
    for rank in fsdp:  # genuinely sharded: DTensors, each rank holding half of every parameter (±1 row)
        assert rank["shards"]["dtensor"]
        assert rank["shards"]["local_numel"] <= 0.55 * rank["shards"]["numel"]
    assert fsdp[0]["shards"]["local_numel"] + fsdp[1]["shards"]["local_numel"] == fsdp[0]["shards"]["numel"]

    # same prompts and samples as the unsharded run, so the same first iteration: loss, KL and weights
    assert fsdp[0]["prompts"] == ddp[0]["prompts"] and fsdp[1]["prompts"] == ddp[1]["prompts"]
    first_ddp, first_fsdp = ddp[0]["logs"][0], fsdp[0]["logs"][0]
    for key in ("objective/kl", "objective/scores", "loss/policy_avg", "loss/value_avg", "policy/grad_norm",
                "val/grad_norm", "policy/approxkl_avg"):
        assert first_fsdp[key] == pytest.approx(first_ddp[key], rel=1e-4, abs=1e-6), key
    assert fsdp[0]["eval"][:2] == pytest.approx(ddp[0]["eval"][:2], abs=1e-6)  # before and after 2 iterations
    ddp_weights = torch.load(tmp_path / "ddp" / "weights_full.pt")
    fsdp_weights = torch.load(tmp_path / "fsdp" / "weights_full.pt")
    assert ddp_weights.keys() == fsdp_weights.keys()
    # sampling amplifies rounding after a few updates; compare the trained weights loosely, the first update tightly
    for name in ddp_weights:
        assert torch.allclose(ddp_weights[name], fsdp_weights[name], atol=5e-3), name

    # killed after iteration 3 (checkpoint-2 written sharded), resumed: the uninterrupted run's weights
    launch(tmp_path, tiny_model_dir, tmp_path / "cut", "kill", steps=4)
    assert (tmp_path / "cut" / "checkpoint-2" / "training_state").is_dir()
    assert not (tmp_path / "cut" / "checkpoint-4").exists()
    resumed = launch(tmp_path, tiny_model_dir, tmp_path / "cut", "resume", steps=4)
    assert resumed[0]["prompts"] == fsdp[0]["prompts"] and resumed[1]["prompts"] == fsdp[1]["prompts"]
    resumed_weights = torch.load(tmp_path / "cut" / "weights_resume.pt")
    for name in fsdp_weights:
        assert torch.allclose(resumed_weights[name], fsdp_weights[name], atol=1e-6), name

    # the saved policy is an ordinary model folder holding the gathered weights
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "fsdp" / "final_full")
    for name, value in saved.state_dict().items():
        assert torch.equal(value, fsdp_weights[f"policy.{name}"]), name


def test_launch_settings_pick_fsdp2_and_refuse_deepspeed_and_fsdp1_by_name():
    from align.ppo.sharding import requested_sharding

    assert requested_sharding({}) is None
    assert requested_sharding({**FSDP2_ENV, "FSDP_RESHARD_AFTER_FORWARD": "false"}) == \
        {"reshard_after_forward": False, "cpu_offload": False}
    with pytest.raises(ValueError, match=r"ZeRO stage 3.*deepspeed_zero3\.yaml.*fsdp2\.yaml"):
        requested_sharding({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"})
    with pytest.raises(ValueError, match="fsdp_version: 2"):
        requested_sharding({"ACCELERATE_USE_FSDP": "true", "FSDP_VERSION": "1"})


def test_ppo_stage_under_a_deepspeed_launch_stops_with_the_setting_named(tmp_path, monkeypatch, tiny_model_dir):
    from align.errors import AlignError
    from align.recipe import load_recipe
    from align.runner import run_recipe

    recipe_file = tmp_path / "r.yaml"
    recipe_file.write_text(textwrap.dedent(f"""
        name: zero
        datasets:
          prompts: {{builtin: reviews, split: prompts, size: 8}}
        stages:
          ppo:
            kind: ppo
            policy: {tiny_model_dir}
            rewards: [gold]
            dataset: prompts
            args: {{max_steps: 1}}
        judges:
          gold: {{function: "align.data.builtin:gold_judge"}}
    """))
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "2")
    with pytest.raises(AlignError, match=r"stages\.ppo: PPO does not run under DeepSpeed.*zero2"):
        run_recipe(load_recipe(recipe_file, output_dir=str(tmp_path / "out")), echo=lambda *_: None)
