"""PPOTrainer: rollout -> score -> per-token rewards -> GAE -> clipped updates, under accelerate.

The policy and value model live in one module (so one DDP wrapper and one optimiser serve both).
With a LoRA policy the reference is the same weights with the adapter disabled. The value model
starts from the reward model (InstructGPT) or, without one, from the policy's backbone with a new
scalar head. Prompts are drawn by iteration number from seeded permutations, so a resumed run
sees exactly the prompts an uninterrupted one would.
"""

from __future__ import annotations

import copy
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import (AutoModelForSequenceClassification, DefaultFlowCallback, TrainerControl, TrainerState,
                          get_scheduler)
from transformers.integrations import get_reporting_integration_callbacks
from transformers.trainer_callback import CallbackHandler

from align.ppo import core
from align.ppo.config import PPOConfig

STATE_FILE = "ppo_state.pt"


class PolicyAndValue(nn.Module):
    """forward(ids, mask) -> (policy logits, per-position values V(s) from the value model)."""

    def __init__(self, policy: nn.Module, value_model: nn.Module):
        super().__init__()
        self.policy, self.value_model = policy, value_model

    def forward(self, input_ids, attention_mask):
        positions = position_ids(attention_mask)
        logits = self.policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                             use_cache=False).logits
        hidden = self.value_model.base_model(input_ids=input_ids, attention_mask=attention_mask,
                                             position_ids=positions).last_hidden_state
        return logits, self.value_model.score(hidden).squeeze(-1)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that skip left padding, as ``generate`` computes them: otherwise the log-probs
    scored after sampling are not those of the distribution that sampled."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def value_model_from(model: nn.Module) -> nn.Module:
    """A scalar-head classifier sharing ``model``'s architecture and backbone weights."""
    if hasattr(model, "score"):  # already a sequence classifier (the reward model)
        return copy.deepcopy(model)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = copy.deepcopy(base.config)
    config.num_labels = 1
    value = AutoModelForSequenceClassification.from_config(config)
    # Under LoRA the backbone's weights sit in `base_layer`s; the value model takes the frozen base.
    weights = {k.replace(".base_layer", ""): v for k, v in base.base_model.state_dict().items() if "lora_" not in k}
    value.base_model.load_state_dict(weights)
    return value


def prompt_texts(dataset, tokenizer) -> list[str]:
    """TRL prompt-only formats: conversational prompts get the chat template, strings are kept."""
    return [tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False) if isinstance(p, list) else p
            for p in dataset["prompt"]]


def load_weights(model: nn.Module, folder: Path) -> None:
    """Weights written by save_pretrained; only tied copies (lm_head of tied embeddings) may be absent."""
    from safetensors.torch import load_file

    result = model.load_state_dict(load_file(str(folder / "model.safetensors")), strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [k for k in result.missing_keys if k not in tied and not k.startswith("lm_head")]
    if missing or result.unexpected_keys:
        raise RuntimeError(f"checkpoint {folder} does not match the model: missing {missing}, "
                           f"unexpected {result.unexpected_keys}")


class PPOTrainer:
    def __init__(self, model, ref_model=None, reward_model=None, reward_funcs=None, value_model=None,
                 processing_class=None, args: PPOConfig | None = None, train_dataset=None, eval_dataset=None,
                 peft_config=None, callbacks=None):
        from accelerate import Accelerator

        from transformers import set_seed

        self.args = args or PPOConfig(output_dir="ppo")
        if reward_model is None and not reward_funcs:
            raise ValueError("PPOTrainer needs a reward_model, reward_funcs, or both")
        set_seed(self.args.seed)  # the value head's init, then sampling: a run is a function of its seed
        self.accelerator = Accelerator(cpu=self.args.use_cpu, mixed_precision="bf16" if self.args.bf16 else "no")
        self.tokenizer = processing_class
        if isinstance(model, (str, os.PathLike)):
            from align.models import load_causal_lm, load_tokenizer

            self.tokenizer = self.tokenizer or load_tokenizer(model)
            model = load_causal_lm(model)
        if peft_config is not None:
            from peft import get_peft_model

            model = get_peft_model(model, peft_config)
        self.is_peft = hasattr(model, "disable_adapter")
        self.ref_model = None if self.is_peft else (ref_model or copy.deepcopy(model))
        if self.ref_model is not None:
            self.ref_model.eval().requires_grad_(False).to(self.accelerator.device)
        value_model = value_model or value_model_from(reward_model if reward_model is not None else model)
        value_model.config.pad_token_id = self.tokenizer.pad_token_id
        self.reward_funcs = list(reward_funcs or [])
        self.reward_judge = None
        if reward_model is not None:
            from align.eval.judges import RewardModelJudge

            reward_model.eval().requires_grad_(False).to(self.accelerator.device)
            self.reward_judge = RewardModelJudge(reward_model, self.tokenizer)
        self.train_prompts, self.train_rows = prompt_texts(train_dataset, self.tokenizer), train_dataset["prompt"]
        evals = eval_dataset if eval_dataset is not None else train_dataset
        n_eval = min(self.args.eval_prompts, len(evals))
        self.eval_prompts, self.eval_rows = prompt_texts(evals, self.tokenizer)[:n_eval], evals["prompt"][:n_eval]

        self.model = PolicyAndValue(model, value_model)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(params, lr=self.args.learning_rate, weight_decay=self.args.weight_decay,
                                           betas=(self.args.adam_beta1, self.args.adam_beta2), eps=self.args.adam_epsilon)
        updates = self.args.max_steps * self.args.ppo_epochs * self.args.num_mini_batches
        self.scheduler = get_scheduler(self.args.lr_scheduler_type, self.optimizer,
                                       num_warmup_steps=self.args.get_warmup_steps(updates), num_training_steps=updates)
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(self.model, self.optimizer, self.scheduler)
        self.kl_ctl = (core.AdaptiveKLController(self.args.kl_coef, self.args.kl_target, self.args.kl_horizon)
                       if self.args.adaptive_kl else core.FixedKLController(self.args.kl_coef))
        self.state = TrainerState(max_steps=self.args.max_steps, logging_steps=self.args.logging_steps,
                                  save_steps=self.args.save_steps, eval_steps=self.args.eval_steps,
                                  is_local_process_zero=self.accelerator.is_local_main_process,
                                  is_world_process_zero=self.accelerator.is_main_process)
        self.control = TrainerControl()
        reporters = get_reporting_integration_callbacks(self.args.report_to)
        self.callback_handler = CallbackHandler([DefaultFlowCallback, *reporters, *(callbacks or [])], self.unwrapped.policy, self.tokenizer,
                                                self.optimizer, self.scheduler)
        self.prompts_seen: list[int] = []  # dataset indices, in order (for tests and audits)
        set_seed(self.args.seed + self.accelerator.process_index)  # each rank samples its own responses

    @property
    def unwrapped(self) -> PolicyAndValue:
        return self.accelerator.unwrap_model(self.model)

    # ------------------------------------------------------------------ rollout
    def prompt_indices(self, iteration: int) -> list[int]:
        """Prompts for (iteration, rank): consecutive slices of per-epoch seeded permutations."""
        n, size = len(self.train_prompts), self.args.rollout_batch_size
        start = (iteration * self.accelerator.num_processes + self.accelerator.process_index) * size
        indices = []
        for position in range(start, start + size):
            epoch, offset = divmod(position, n)
            generator = torch.Generator().manual_seed(self.args.seed + epoch)
            indices.append(int(torch.randperm(n, generator=generator)[offset]))
        return indices

    def forward_logprobs(self, model: nn.Module, input_ids, attention_mask, context: int) -> torch.Tensor:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
                       use_cache=False).logits
        logits = logits[:, context - 1:-1] / self.args.temperature
        return core.logprobs_from_logits(logits, input_ids[:, context:])

    @torch.no_grad()
    def sample(self, prompts: list[str], seed: int | None = None) -> dict:
        """Left-padded prompts -> sampled responses with their mask, logprobs, reference logprobs, values."""
        tok = self.tokenizer
        enc = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        width = max(map(len, enc))
        ids = torch.tensor([[tok.pad_token_id] * (width - len(e)) + e for e in enc], device=self.accelerator.device)
        prompt_mask = (torch.arange(width, device=ids.device) >= torch.tensor([width - len(e) for e in enc],
                                                                                device=ids.device)[:, None]).long()
        policy = self.unwrapped.policy
        policy.eval()
        if seed is not None:
            torch.manual_seed(seed)
        out = policy.generate(input_ids=ids, attention_mask=prompt_mask, do_sample=True,
                              temperature=self.args.temperature, top_k=self.args.top_k, top_p=self.args.top_p,
                              max_new_tokens=self.args.max_new_tokens, pad_token_id=tok.pad_token_id,
                              eos_token_id=tok.eos_token_id)
        responses = out[:, width:]
        mask = core.response_mask(responses, tok.eos_token_id)
        responses = torch.where(mask.bool(), responses, tok.pad_token_id)
        full = torch.cat([ids, responses], 1)
        attention = torch.cat([prompt_mask, mask], 1)
        logits, values = self.model(full, attention)
        logprobs = core.logprobs_from_logits(logits[:, width - 1:-1] / self.args.temperature, responses)
        entropy = core.entropy_from_logits(logits[:, width - 1:-1] / self.args.temperature)
        if self.is_peft:
            with policy.disable_adapter():
                ref_logprobs = self.forward_logprobs(policy, full, attention, width)
        else:
            ref_logprobs = self.forward_logprobs(self.ref_model, full, attention, width)
        texts = tok.batch_decode(responses, skip_special_tokens=True)
        has_eos = (responses == tok.eos_token_id).any(1)
        return {"input_ids": full, "attention_mask": attention, "mask": mask.float(), "context": width,
                "logprobs": logprobs * mask, "ref_logprobs": ref_logprobs * mask, "values": values[:, width - 1:-1] * mask,
                "entropy": entropy, "texts": texts, "has_eos": has_eos}

    def score(self, rows: list, texts: list[str]) -> torch.Tensor:
        """Reward model score plus every reward function, per response."""
        total = torch.zeros(len(texts))
        if self.reward_judge is not None:
            total += torch.tensor(self.reward_judge.score(rows, texts), dtype=torch.float)
        for func in self.reward_funcs:
            total += torch.tensor(func(rows, texts), dtype=torch.float)
        return total.to(self.accelerator.device)

    # ------------------------------------------------------------------ one iteration
    def iteration(self, step: int) -> dict:
        args = self.args
        indices = self.prompt_indices(step)
        self.prompts_seen += indices
        started = time.time()
        batch = self.sample([self.train_prompts[i] for i in indices])
        generated = time.time()
        scores = self.score([self.train_rows[i] for i in indices], batch["texts"])
        raw_scores = scores.clone()
        if args.missing_eos_penalty is not None:
            scores = scores - args.missing_eos_penalty * (~batch["has_eos"]).float()
        if args.reward_clip is not None:
            scores = scores.clamp(-args.reward_clip, args.reward_clip)
        if args.whiten_scores:
            scores = core.masked_whiten(scores, torch.ones_like(scores), shift_mean=False)
        mask = batch["mask"]
        rewards, non_score = core.per_token_rewards(scores, batch["logprobs"], batch["ref_logprobs"], mask, self.kl_ctl.value)
        advantages, returns = core.gae(rewards, batch["values"], mask, args.gamma, args.lam)
        if args.whiten_advantages:
            advantages = core.masked_whiten(advantages, mask)
        scored = time.time()

        stats = {k: [] for k in ("pg_loss", "vf_loss", "pg_clipfrac", "vf_clipfrac", "approx_kl", "ratio")}
        size = args.rollout_batch_size // args.num_mini_batches
        self.model.train()
        for _ in range(args.ppo_epochs):
            order = torch.randperm(args.rollout_batch_size, device=mask.device)  # fresh minibatches every epoch
            for start in range(0, args.rollout_batch_size, size):
                mb = order[start:start + size]
                logits, values = self.model(batch["input_ids"][mb], batch["attention_mask"][mb])
                context = batch["context"]
                new_logp = core.logprobs_from_logits(logits[:, context - 1:-1] / args.temperature,
                                                     batch["input_ids"][mb][:, context:])
                pg_loss, pg_clipfrac, approx_kl = core.policy_loss(new_logp, batch["logprobs"][mb], advantages[mb],
                                                                   mask[mb], args.cliprange)
                vf_loss, vf_clipfrac = core.value_loss(values[:, context - 1:-1], batch["values"][mb], returns[mb],
                                                       mask[mb], args.cliprange_value)
                self.accelerator.backward(pg_loss + args.vf_coef * vf_loss)
                if args.max_grad_norm:
                    self.accelerator.clip_grad_norm_(self.model.parameters(), args.max_grad_norm)
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad()
                ratio = core.masked_mean(torch.exp(new_logp - batch["logprobs"][mb]), mask[mb])
                for key, value in zip(stats, (pg_loss, vf_loss, pg_clipfrac, vf_clipfrac, approx_kl, ratio)):
                    stats[key].append(value.detach())

        kl_tokens = core.kl_estimate(batch["logprobs"], batch["ref_logprobs"], args.kl_estimator) * mask
        mean = lambda t: self.accelerator.reduce(t.detach().float().mean(), reduction="mean").item()  # noqa: E731
        global_kl = mean(kl_tokens.sum(1))
        self.kl_ctl.update(mean((batch["logprobs"] - batch["ref_logprobs"]).sum(1)),
                           args.rollout_batch_size * self.accelerator.num_processes)
        return {
            "objective/kl": global_kl,
            "objective/entropy": mean(core.masked_mean(batch["entropy"], mask, dim=1)),
            "objective/non_score_reward": mean(non_score.sum(1)),
            "objective/scores": mean(raw_scores),
            "objective/rlhf_reward": mean(scores + non_score.sum(1)),
            "policy/approxkl_avg": mean(torch.stack(stats["approx_kl"])),
            "policy/clipfrac_avg": mean(torch.stack(stats["pg_clipfrac"])),
            "loss/policy_avg": mean(torch.stack(stats["pg_loss"])),
            "loss/value_avg": mean(torch.stack(stats["vf_loss"])),
            "val/clipfrac_avg": mean(torch.stack(stats["vf_clipfrac"])),
            "val/ratio": mean(torch.stack(stats["ratio"])),
            "val/num_eos_tokens": mean(batch["has_eos"].float()) * len(indices),
            "response_length": mean(mask.sum(1)),
            "kl_coef": self.kl_ctl.value,
            "lr": self.scheduler.get_last_lr()[0],
            "episode": (step + 1) * args.rollout_batch_size * self.accelerator.num_processes,
            "time/generation": generated - started,
            "time/scoring": scored - generated,
            "time/optimization": time.time() - scored,
        }

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Mean score and KL (k1, summed per response) on the fixed eval prompts, fixed sampling seed."""
        with torch.random.fork_rng(devices=[]):
            batch = self.sample(self.eval_prompts, seed=self.args.seed + 12345)
        scores = self.score(self.eval_rows, batch["texts"])
        kl = ((batch["logprobs"] - batch["ref_logprobs"]) * batch["mask"]).sum(1)
        return {"eval/score": scores.mean().item(), "eval/kl": kl.mean().item()}

    # ------------------------------------------------------------------ loop, checkpoints
    def log(self, logs: dict) -> None:
        logs = {**logs, "step": self.state.global_step}
        self.state.log_history.append(logs)
        self.control = self.callback_handler.on_log(self.args, self.state, self.control, logs)

    def train(self, resume_from_checkpoint: str | bool | None = None) -> TrainerState:
        if resume_from_checkpoint:
            if resume_from_checkpoint is True:
                from transformers.trainer_utils import get_last_checkpoint

                resume_from_checkpoint = get_last_checkpoint(self.args.output_dir)
            if resume_from_checkpoint:
                self.load_checkpoint(resume_from_checkpoint)
        self.control = self.callback_handler.on_train_begin(self.args, self.state, self.control)
        bar = tqdm(total=self.args.max_steps, initial=self.state.global_step, desc="ppo",
                   disable=not self.accelerator.is_main_process)
        while self.state.global_step < self.args.max_steps:
            metrics = self.iteration(self.state.global_step)
            self.state.global_step += 1
            self.state.epoch = self.state.global_step * self.args.rollout_batch_size / max(len(self.train_prompts), 1)
            if self.args.eval_steps and self.state.global_step % int(self.args.eval_steps) == 0 \
                    or self.state.global_step == self.args.max_steps:
                metrics.update(self.evaluate())
            if self.state.global_step % max(int(self.args.logging_steps), 1) == 0 or "eval/score" in metrics:
                self.log(metrics)
            bar.update(1)
            bar.set_postfix(score=f"{metrics['objective/scores']:.3f}", kl=f"{metrics['objective/kl']:.2f}")
            if self.args.save_strategy != "no" and self.state.global_step % int(self.args.save_steps) == 0:
                self.save_checkpoint()
            self.control = self.callback_handler.on_step_end(self.args, self.state, self.control)
            if self.control.should_training_stop:
                break
        bar.close()
        self.control = self.callback_handler.on_train_end(self.args, self.state, self.control)
        return self.state

    def save_checkpoint(self) -> None:
        folder = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            self.save_model(folder)
            torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                        "kl_ctl": self.kl_ctl.state_dict(), "prompts_seen": self.prompts_seen,
                        "rng": {"python": random.getstate(), "numpy": np.random.get_state(),
                                "torch": torch.get_rng_state()}}, folder / STATE_FILE)
            self.state.save_to_json(str(folder / "trainer_state.json"))
            self.rotate_checkpoints()
        self.accelerator.wait_for_everyone()

    def rotate_checkpoints(self) -> None:
        if not self.args.save_total_limit:
            return
        folders = sorted(Path(self.args.output_dir).glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
        for old in folders[:-self.args.save_total_limit]:
            shutil.rmtree(old)

    def load_checkpoint(self, folder: str) -> None:
        from safetensors.torch import load_file

        folder = Path(folder)
        model = self.unwrapped
        if self.is_peft:
            from peft import set_peft_model_state_dict

            set_peft_model_state_dict(model.policy, load_file(str(folder / "adapter_model.safetensors")))
        else:
            load_weights(model.policy, folder)
        load_weights(model.value_model, folder / "value_model")
        saved = torch.load(folder / STATE_FILE, weights_only=False)
        self.optimizer.load_state_dict(saved["optimizer"])
        self.scheduler.load_state_dict(saved["scheduler"])
        self.kl_ctl.load_state_dict(saved["kl_ctl"])
        self.prompts_seen = list(saved["prompts_seen"])
        random.setstate(saved["rng"]["python"])
        np.random.set_state(saved["rng"]["numpy"])
        torch.set_rng_state(saved["rng"]["torch"])
        self.state = TrainerState.load_from_json(str(folder / "trainer_state.json"))

    def save_model(self, output_dir: str | Path) -> None:
        """The policy (adapter when LoRA) with its tokenizer, and the value model under value_model/."""
        output_dir = Path(output_dir)
        model = self.unwrapped
        model.policy.save_pretrained(output_dir)
        model.value_model.save_pretrained(output_dir / "value_model")
        if self.tokenizer is not None:
            self.tokenizer.save_pretrained(output_dir)

    def save_state(self) -> None:
        if self.accelerator.is_main_process:
            self.state.save_to_json(str(Path(self.args.output_dir) / "trainer_state.json"))
