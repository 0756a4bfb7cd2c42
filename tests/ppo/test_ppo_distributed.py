"""Two gloo ranks (torchrun on CPU): each rolls out its own prompts, the adaptive controller sees the
global mean KL, both ranks end with the same weights, and a killed two-process run resumes exactly."""

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
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from align.ppo import PPOConfig, PPOTrainer

    torch.set_num_threads(1)
    model_dir, out, mode = sys.argv[1:4]
''') + CAT_REWARD_AND_KILL + textwrap.dedent('''

    args = PPOConfig(output_dir=out, max_steps=4, rollout_batch_size=8, num_mini_batches=2, ppo_epochs=2,
                     max_new_tokens=8, learning_rate=3e-3, kl_coef=0.05, adaptive_kl=True, kl_target=0.1,
                     kl_horizon=50, eval_steps=2, eval_prompts=8, save_steps=2, use_cpu=True, report_to="none",
                     disable_tqdm=True, seed=0)
    prompts = datasets.Dataset.from_dict({"prompt": ["the cat", "a dog is", "my phone", "the lamp was very"] * 8})
    t = PPOTrainer(AutoModelForCausalLM.from_pretrained(model_dir), reward_funcs=[reward], processing_class=tok,
                   args=args, train_dataset=prompts, callbacks=[DieAt3()])
    sampling_seed = torch.initial_seed()
    controller, local, in_iteration = [], [], [False]  # the KL the controller got; this rank's own mean KL
    update, rollout, iteration = t.kl_ctl.update, t.rollout, t.iteration

    def recording_update(kl, n):
        controller.append(kl)
        return update(kl, n)

    def recording_rollout(prompt_ids, **kwargs):
        batch = rollout(prompt_ids, **kwargs)
        if in_iteration[0]:
            local.append(((batch["logprobs"] - batch["ref_logprobs"]) * batch["mask"]).sum(1).mean().item())
        return batch

    def recording_iteration():
        in_iteration[0] = True
        try:
            return iteration()
        finally:
            in_iteration[0] = False

    t.kl_ctl.update, t.rollout, t.iteration = recording_update, recording_rollout, recording_iteration
    t.train(resume_from_checkpoint=True if mode == "resume" else None)
    weights = b"".join(p.detach().numpy().tobytes() for p in t.accelerator.unwrap_model(t.model).parameters())
    logs = [h for h in t.state.log_history if "objective/kl" in h]
    json.dump({"world": t.accelerator.num_processes, "prompts": t.prompts_seen, "controller_kl": controller, "local_kl": local,
               "kl_coef": [h["kl_coef"] for h in logs], "kl": [h["objective/kl"] for h in logs],
               "weights": hashlib.md5(weights).hexdigest(), "sampling_seed": sampling_seed},
              open(f"{out}/rank{t.accelerator.process_index}_{mode}.json", "w"))
    # Tear the gloo group down before exit; otherwise a rank can abort at interpreter shutdown.
    t.accelerator.wait_for_everyone()
    torch.distributed.destroy_process_group()
''')


def launch(tmp_path, model_dir, out, mode):
    script = tmp_path / "run_ppo.py"
    script.write_text(SCRIPT)
    env = cpu_ranks_env()
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script),
                           str(model_dir), str(out), mode], capture_output=True, text=True, env=env, timeout=300)
    if mode != "kill":  # a killed job may exit non-zero (gloo threads die with it), as a real kill would
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]


@pytest.mark.slow
def test_two_ranks_share_the_controller_and_resume_exactly(tmp_path, tiny_model_dir):
    launch(tmp_path, tiny_model_dir, tmp_path / "full", "full")
    ranks = [json.loads((tmp_path / "full" / f"rank{r}_full.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world"] == 2
    assert ranks[0]["sampling_seed"] != ranks[1]["sampling_seed"]  # each rank samples its own responses
    # 8 prompts per rank per iteration: the first two iterations of both ranks make one pass over the 32
    assert not set(ranks[0]["prompts"][:8]) & set(ranks[1]["prompts"][:8])
    assert sorted(ranks[0]["prompts"][:16] + ranks[1]["prompts"][:16]) == list(range(32))
    # the controller got the global mean KL -- the same on both ranks, the mean of the two ranks' own --
    # so β moved identically; the weights stayed in sync
    assert ranks[0]["controller_kl"] == ranks[1]["controller_kl"] == ranks[0]["kl"]
    assert ranks[0]["local_kl"][1:] != ranks[1]["local_kl"][1:]
    expected = [(a + b) / 2 for a, b in zip(ranks[0]["local_kl"], ranks[1]["local_kl"])]
    assert ranks[0]["controller_kl"] == pytest.approx(expected, abs=1e-5)
    assert ranks[0]["kl_coef"] == ranks[1]["kl_coef"] and ranks[0]["kl_coef"][-1] != 0.05
    assert ranks[0]["weights"] == ranks[1]["weights"]
    assert (tmp_path / "full" / "checkpoint-4" / "rng_state_1.pth").exists()

    launch(tmp_path, tiny_model_dir, tmp_path / "cut", "kill")  # dies after iteration 3; checkpoint-2 stays
    assert (tmp_path / "cut" / "checkpoint-2").exists() and not (tmp_path / "cut" / "checkpoint-4").exists()
    launch(tmp_path, tiny_model_dir, tmp_path / "cut", "resume")
    resumed = [json.loads((tmp_path / "cut" / f"rank{r}_resume.json").read_text()) for r in (0, 1)]
    for full, again in zip(ranks, resumed):
        assert again["prompts"] == full["prompts"] and again["weights"] == full["weights"]
        assert again["kl_coef"] == pytest.approx(full["kl_coef"])
