"""PPOTrainer: sample -> score -> per-token KL-penalised rewards -> GAE -> clipped PPO updates.

A self-contained loop under ``accelerate`` that keeps transformers' ``TrainerState``,
``TrainerControl`` and callbacks, so ``report_to`` integrations, user callbacks and
``trainer_state.json`` work as with any Trainer. One step (``global_step``) is one PPO iteration.

- Policy and value model sit in one module (one DDP wrapper, one AdamW with a param group each);
  under an FSDP2 launch config both are sharded with ``fully_shard`` (see ``align.ppo.sharding``).
- The value model may be a LoRA adapter (``value_peft_config``) with a trainable head. On the
  reward model's weights, the reward model is that same module with the adapter disabled: one
  frozen copy serves both, as the LoRA policy's base serves as the reference.
- The value model is a sequence classifier used per token: its scalar head on the hidden state at
  the position whose logits sample ``a_t`` gives ``V(s_t)``. It starts as a copy of the reward
  model (InstructGPT) or, without one, as the policy's backbone with a new scalar head.
- LoRA policy: the reference is the same weights with the adapter disabled. Otherwise a frozen copy.
- Dropout is switched off everywhere (Huang et al. 2024), so the first minibatch's ratio is exactly 1.
- Prompt order is a pure function of (seed, iteration, rank): a resumed run sees what an
  uninterrupted one would.

Metrics (TRL's names; per-response quantities are sums over the response's tokens, then means
over all processes' responses): ``objective/kl`` (args.kl_estimator), ``objective/entropy`` (exact
per-token entropy of the sampling distribution, summed), ``objective/non_score_reward`` (-β·k1),
``objective/scores`` (the weighted judges' raw score, before shift/scale/EOS penalty/clip),
``objective/rlhf_reward`` (shaped score + non-score reward: what PPO maximises),
``policy/approxkl_avg`` (½·mean (log ratio)² over the updates), clip fractions, losses,
``val/ratio``, ``val/var_explained``, ``val/num_eos_tokens`` (responses that ended, summed),
``response_length``, ``kl_coef`` (the β used for this batch), ``lr``, ``episode``, ``time/*``;
``eval/score`` and ``eval/kl`` (k1) from :meth:`PPOTrainer.evaluate`.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import os
import random
import shutil
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm
from transformers import TrainerControl, TrainerState, get_scheduler
from transformers.integrations import get_reporting_integration_callbacks
from transformers.trainer_callback import CallbackHandler, DefaultFlowCallback
from transformers.trainer_pt_utils import get_parameter_names
from transformers.trainer_utils import TrainOutput, rotate_checkpoints, set_seed

from align.checkpoints import last_complete, write_manifest
from align.eval.generation import declared_decoding, prompt_ids
from align.ppo import core, sharding
from align.ppo.config import PPOConfig

VALUE_DIR, PPO_STATE, TRAINING_STATE = "value_model", "ppo_state.pt", "training_state"
NO_DECAY = [r"bias", r"layernorm", r"rmsnorm", r"(?:^|\.)norm(?:$|\.)", r"_norm(?:$|\.)"]  # as Trainer
EVAL_SEED = 1_000_003  # added to args.seed: the eval prompts are sampled with the same seed every time


def disable_dropout(model: nn.Module) -> None:
    """Dropout off for good, also where a model keeps its rate as a plain float (OPT/BLOOM's ``self.dropout``,
    ``attention_dropout``, GPT-style ``resid_pdrop``) and calls ``F.dropout`` in train mode."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0
        for name, value in vars(module).items():
            if isinstance(value, float) and name.endswith(("dropout", "pdrop")):
                setattr(module, name, 0.0)


class PolicyAndValue(nn.Module):
    """``forward(ids, mask, n)`` -> (policy logits that sample the last ``n`` tokens, values V(s_t) for them)."""

    def __init__(self, policy: nn.Module, value_model: nn.Module):
        super().__init__()
        self.policy, self.value_model = policy, value_model
        if not hasattr(self._critic, "score"):
            raise ValueError("the value model must be a decoder sequence classifier with a `score` head "
                             "(e.g. LlamaForSequenceClassification)")

    @property
    def _critic(self) -> nn.Module:  # the classifier itself, inside a peft wrapper if the critic is LoRA
        return self.value_model.get_base_model() if hasattr(self.value_model, "get_base_model") else self.value_model

    def forward(self, input_ids, attention_mask, response_length: int):
        positions = core.position_ids(attention_mask)
        # The logits at position p sample token p+1: the last n tokens come from positions -n-1 .. -2.
        logits = self.policy(input_ids=input_ids, attention_mask=attention_mask, position_ids=positions,
                             use_cache=False, logits_to_keep=response_length + 1).logits[:, :-1]
        critic = self._critic  # backbone and head called directly: LoRA layers sit inside them
        hidden = getattr(critic, critic.base_model_prefix)(input_ids=input_ids, attention_mask=attention_mask,
                                                           position_ids=positions, use_cache=False).last_hidden_state
        values = critic.score(hidden[:, -response_length - 1:-1]).squeeze(-1)
        return logits, values.float()


def value_model_from_policy(model: nn.Module) -> nn.Module:
    """A scalar-head classifier of the policy's architecture holding the policy's backbone weights."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if getattr(base, "is_loaded_in_4bit", False) or getattr(base, "is_loaded_in_8bit", False):
        raise ValueError("a 4/8-bit (bitsandbytes) policy cannot seed the value model; pass a reward_model or a "
                         "full-precision value_model, e.g. align.models.load_sequence_classifier(<policy folder>)[0]")
    from align.models import sequence_classifier_class

    config = copy.deepcopy(base.config)
    config.num_labels = 1
    value = sequence_classifier_class(config)._from_config(config)
    # A peft-wrapped policy keeps the frozen weights in `base_layer`s; the value model takes those.
    weights = {k.replace(".base_layer", ""): v for k, v in base.base_model.state_dict().items() if "lora_" not in k}
    value.base_model.load_state_dict(weights)
    return value.to(next(base.parameters()).device)


def lora_critic(value_model: nn.Module, config) -> nn.Module:
    """The critic as a LoRA adapter on ``value_model`` plus a trainable copy of its ``score`` head (peft's
    SEQ_CLS task keeps the head in ``modules_to_save``; with the adapter disabled the original head scores)."""
    from peft import get_peft_model

    if getattr(config, "task_type", None) != "SEQ_CLS":
        config = copy.deepcopy(config)
        config.task_type = "SEQ_CLS"
    return get_peft_model(value_model, config)


def param_groups(model: nn.Module, weight_decay: float, **options) -> list[dict]:
    """The trainable parameters as AdamW groups, weight decay only where transformers' Trainer applies it
    (not on biases and norms)."""
    decayed = set(get_parameter_names(model, [nn.LayerNorm], NO_DECAY))
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    groups = [{"params": [p for n, p in trainable if n in decayed], "weight_decay": weight_decay, **options},
              {"params": [p for n, p in trainable if n not in decayed], "weight_decay": 0.0, **options}]
    return [g for g in groups if g["params"]]


class PPOTrainer:
    def __init__(self, model, ref_model=None, reward_model=None, reward_funcs=None, value_model=None,
                 processing_class=None, args: PPOConfig | None = None, train_dataset=None, eval_dataset=None,
                 peft_config=None, callbacks=None, reward_processing_class=None, chat: bool = True,
                 value_peft_config=None):
        """``reward_processing_class``: the reward model's own tokenizer (default: the policy's). Responses are
        decoded to text and re-encoded with it and its chat template, so a reward model of another family scores
        what it was trained on. ``chat``: render prompts with the chat template (a plain string is one user
        message); False continues string prompts as raw text. ``value_peft_config``: a peft ``LoraConfig`` that
        makes the critic a LoRA adapter plus a trainable head (task type SEQ_CLS); on the reward model's own
        weights when the critic starts from the reward model."""
        from accelerate import Accelerator

        from align.chat_templates import prepare_chat_template
        from align.eval.generation import decoding_config, note_ignored_settings, stop_ids
        from align.eval.judges import RewardModelJudge
        from align.models import is_quantized, keep_4bit_trainable, load_causal_lm, load_sequence_classifier, load_tokenizer

        self.args = args = args if args is not None else PPOConfig(output_dir="ppo_output")
        if reward_model is None and not reward_funcs:
            raise ValueError("PPOTrainer needs a reward: a reward_model, reward_funcs, or both")
        if train_dataset is None:
            raise ValueError("PPOTrainer needs a train_dataset of prompts")
        cuda = torch.cuda.is_available() and not args.use_cpu
        precision = "bf16" if args.bf16 and cuda and torch.cuda.is_bf16_supported() else "fp16" if args.fp16 and cuda else "no"
        self.accelerator = Accelerator(cpu=not cuda, mixed_precision=precision)
        device, world = self.accelerator.device, self.accelerator.num_processes
        shard_options = sharding.requested_sharding()
        self.sharded = shard_options is not None and world > 1
        set_seed(args.seed + self.accelerator.process_index)  # every process samples its own responses

        if isinstance(model, (str, os.PathLike)):
            processing_class = processing_class or load_tokenizer(model)
            model = load_causal_lm(model, training=True)
        if processing_class is None:
            raise ValueError("PPOTrainer needs processing_class (the policy's tokenizer)")
        self.tokenizer = tok = processing_class
        if tok.eos_token_id is None:
            raise ValueError("the tokenizer needs an eos_token: responses end there")
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        self.chat = chat
        if chat:
            prepare_chat_template(tok, where="chat_template")
        # stop on EOS and on whatever else the model's generation config stops on (e.g. an end-of-turn token)
        self.stop_ids = stop_ids(model, tok)
        if self.accelerator.is_main_process:
            note_ignored_settings(model, "PPO rollouts")
        # exactly the distribution PPO's log-probs describe: softmax(logits / temperature), nothing else
        self.generation_config = decoding_config(max_new_tokens=args.max_new_tokens, stop_ids=self.stop_ids,
                                                 pad_id=tok.pad_token_id, temperature=args.temperature)
        # reward model(s) and reward functions, in the order of args.reward_weights
        self.judge = None
        if reward_model is not None:
            reward_tok = reward_processing_class or tok
            if isinstance(reward_model, (str, os.PathLike)):
                reward_model, loaded = load_sequence_classifier(reward_model, field="reward_model")
                reward_tok = reward_processing_class or loaded
            self.judge = RewardModelJudge(reward_model.to(device), reward_tok)
        if callable(reward_funcs):
            reward_funcs = [reward_funcs]
        self.reward_funcs = list(reward_funcs or [])
        n_rewards = (self.judge is not None) + len(self.reward_funcs)
        self.reward_weights = list(args.reward_weights or [1.0] * n_rewards)
        if len(self.reward_weights) != n_rewards:
            raise ValueError(f"reward_weights has {len(self.reward_weights)} entries for {n_rewards} rewards")
        # value model: given, a copy of the reward model, or the policy's backbone (before LoRA is added)
        if isinstance(value_model, (str, os.PathLike)):
            value_model = load_sequence_classifier(value_model, field="value_model")[0]
        shares_reward_model = False
        if value_model is None and self.judge is not None and args.value_model_init == "reward_model":
            if self.judge.tokenizer.get_vocab() == tok.get_vocab():
                # a LoRA critic wraps the reward model itself (adapter off = the reward model); sharded, it wraps a copy
                shares_reward_model = value_peft_config is not None and not self.sharded
                value_model = self.judge.model if shares_reward_model else copy.deepcopy(self.judge.model)
            elif self.accelerator.is_main_process:  # the critic reads the policy's tokens: it needs its vocabulary
                logging.getLogger("align").info(
                    "PPO: the reward model uses another tokenizer than the policy, so the value model starts from "
                    "the policy's weights with a new value head (not from the reward model).")
        value_model = value_model if value_model is not None else value_model_from_policy(model)
        keep_4bit_trainable(model)  # rollouts are no-grad eval forwards
        if self.sharded and (is_quantized(model) or is_quantized(value_model)):
            raise ValueError("a 4/8-bit (bitsandbytes) model cannot be sharded by PPO's FSDP2 path; launch without the "
                             "FSDP config, or train in full precision")
        value_model.config.pad_token_id = tok.pad_token_id
        if peft_config is not None:
            from peft import get_peft_model

            model = get_peft_model(model, peft_config)
        if value_peft_config is not None:
            value_model = lora_critic(value_model, value_peft_config)
        # the judge scores with the reward model: with the critic's adapter on its weights, with the adapter off
        self.reward_model_context = value_model.disable_adapter if shares_reward_model else contextlib.nullcontext
        self.is_peft = hasattr(model, "disable_adapter")
        if isinstance(ref_model, (str, os.PathLike)):
            ref_model = load_causal_lm(ref_model)
        self.ref_model = ref_model if ref_model is not None or self.is_peft else copy.deepcopy(model)
        for frozen in (self.ref_model, self.judge.model if self.judge and not shares_reward_model else None):
            if frozen is not None:
                frozen.eval().requires_grad_(False).to(device)
        for m in (model, value_model, self.ref_model):
            if m is not None:
                disable_dropout(m)
        if args.gradient_checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=args.gradient_checkpointing_kwargs)
        if value_peft_config is None:
            value_model.requires_grad_(True)

        # prompts: TRL's prompt-only formats, tokenised once (conversational -> chat template + generation prompt)
        self.train_rows, self.train_ids, self.train_columns = self._prompts(train_dataset, "train_dataset")
        evals = eval_dataset if eval_dataset is not None else train_dataset
        rows, ids, columns = self._prompts(evals.select(range(min(args.eval_prompts, len(evals)))), "eval_dataset")
        mine = slice(self.accelerator.process_index, None, world)
        self.eval_rows, self.eval_ids, self.eval_columns = rows[mine], ids[mine], columns[mine]
        self.episodes_per_step = args.rollout_batch_size * world
        max_steps = args.max_steps if args.max_steps > 0 else \
            math.ceil(args.num_train_epochs * len(self.train_ids) / self.episodes_per_step)

        self.model = PolicyAndValue(model, value_model)
        if self.sharded:  # before the optimizer exists: it must hold the sharded parameters
            self.reshard_after_forward = shard_options["reshard_after_forward"]
            sharding.shard(self.model, [model, value_model], device, **shard_options)
            if self.accelerator.is_main_process:
                logging.getLogger("align").info(
                    f"PPO: policy and value model sharded with FSDP2 over {world} processes "
                    f"(reshard_after_forward={shard_options['reshard_after_forward']}); rollouts gather them")
            with torch.no_grad():  # FSDP2 must see the root's forward before a submodule's (generate calls the policy)
                self.model(torch.full((1, 2), tok.pad_token_id, device=device), torch.ones(1, 2, device=device), 1)
        groups = [*param_groups(model, args.weight_decay),
                  *param_groups(value_model, args.weight_decay, lr=args.value_learning_rate or args.learning_rate)]
        optimizer = torch.optim.AdamW(groups, lr=args.learning_rate, betas=(args.adam_beta1, args.adam_beta2),
                                      eps=args.adam_epsilon, weight_decay=args.weight_decay)
        updates = max_steps * args.ppo_epochs * args.num_mini_batches
        # not prepared: accelerate would step a prepared scheduler once per process
        self.scheduler = get_scheduler(args.lr_scheduler_type, optimizer, num_warmup_steps=args.get_warmup_steps(updates),
                                       num_training_steps=updates, scheduler_specific_kwargs=args.lr_scheduler_kwargs)
        if self.sharded:  # accelerate must not wrap the sharded module in DDP
            self.optimizer = self.accelerator.prepare(optimizer)
        else:
            self.model, self.optimizer = self.accelerator.prepare(self.model, optimizer)
        self.kl_ctl = (core.AdaptiveKLController(args.kl_coef, args.kl_target, args.kl_horizon) if args.adaptive_kl
                       else core.FixedKLController(args.kl_coef))
        self.state = self._new_state(max_steps)
        self.control = TrainerControl()
        self.callback_handler = CallbackHandler(
            [DefaultFlowCallback, *get_reporting_integration_callbacks(args.report_to), *(callbacks or [])],
            model, tok, self.optimizer, self.scheduler)
        self.engine, self._engine_stale = None, True  # vLLM sampler (use_vllm); stale until given the policy's weights
        if args.use_vllm and (world > 1 or self.sharded):
            raise ValueError("use_vllm: the colocated vLLM engine is wired for one process here; launch PPO in one "
                             "process, or sample with transformers (generation.backend: transformers)")
        self.prompts_seen: list[int] = []  # dataset indices rolled out by this process, in order
        self._gathered = False
        self._permutations: dict[int, list[int]] = {}
        self.control = self.callback_handler.on_init_end(args, self.state, self.control)

    # ------------------------------------------------------------------ helpers
    @property
    def policy(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.model).policy

    @property
    def value_model(self) -> nn.Module:
        return self.accelerator.unwrap_model(self.model).value_model

    def _new_state(self, max_steps: int) -> TrainerState:
        state = TrainerState(is_local_process_zero=self.accelerator.is_local_main_process,
                             is_world_process_zero=self.accelerator.is_main_process)
        state.max_steps, state.train_batch_size = max_steps, self.args.rollout_batch_size
        state.num_train_epochs = math.ceil(max_steps * self.episodes_per_step / len(self.train_ids))
        state.compute_steps(self.args, max_steps)
        if not self.args.eval_steps:
            state.eval_steps = 0
        return state

    def _prompts(self, dataset, where: str) -> tuple[list, list[list[int]], list[dict]]:
        """(prompts, their token ids, each row's other columns: what reward functions get as keywords)."""
        if "prompt" not in dataset.column_names:
            raise ValueError(f"{where}: PPO needs prompt-only data with a 'prompt' column (a string, or a list of "
                             f"messages); the columns are {dataset.column_names}")
        from align.chat_templates import row_options

        rows = list(dataset["prompt"])
        options = [row_options(row) for row in dataset.select_columns(
            [c for c in ("tools", "chat_template_kwargs") if c in dataset.column_names]).to_list()] \
            if {"tools", "chat_template_kwargs"} & set(dataset.column_names) else [None] * len(rows)
        ids = [prompt_ids(self.tokenizer, p, chat=self.chat, options=o)  # the encoding every stage shares
               for p, o in zip(rows, options)]
        if self.args.max_prompt_length:
            ids = [x[-self.args.max_prompt_length:] for x in ids]
        others = dataset.remove_columns("prompt")
        columns = others.to_list() if others.column_names else [{} for _ in rows]
        return rows, ids, columns

    def prompt_indices(self, iteration: int) -> list[int]:
        """This process's prompts for ``iteration``: consecutive slices of per-epoch seeded permutations."""
        n, size = len(self.train_ids), self.args.rollout_batch_size
        start = iteration * self.episodes_per_step + self.accelerator.process_index * size
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        indices = []
        for position in range(start, start + size):
            epoch, offset = divmod(position, n)
            if epoch not in self._permutations:
                self._permutations = {epoch: torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch)).tolist()}
            indices.append(self._permutations[epoch][offset])
        return indices

    def _mean(self, tensor: torch.Tensor, reduction: str = "mean") -> float:
        """Mean over this process, then mean (or sum) over processes."""
        value = tensor.detach().float().mean() if reduction == "mean" else tensor.detach().float().sum()
        return self.accelerator.reduce(value.to(self.accelerator.device), reduction=reduction).item()

    # ------------------------------------------------------------------ rollout and scoring
    @contextlib.contextmanager
    def full_weights(self):
        """Sharded: the policy and critic gathered on every process for the block (rollouts sample from full weights).
        Re-entrant, and a no-op when nothing is sharded."""
        if not self.sharded or self._gathered:
            yield
            return
        self._gathered = True
        try:
            with sharding.gathered(self.model, self.reshard_after_forward):
                yield
        finally:
            self._gathered = False

    @torch.no_grad()
    def rollout(self, prompt_ids: list[list[int]], values: bool = True) -> dict:
        """Sample responses to left-padded prompts; score their log-probs, reference log-probs and (unless
        ``values`` is False, as evaluation needs none) the critic's values and the entropies."""
        with self.full_weights():
            return self._rollout(prompt_ids, values)

    def _rollout(self, prompt_ids: list[list[int]], with_values: bool) -> dict:
        args, tok, device = self.args, self.tokenizer, self.accelerator.device
        width = max(map(len, prompt_ids))
        ids = torch.tensor([[tok.pad_token_id] * (width - len(p)) + p for p in prompt_ids], device=device)
        prompt_mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids], device=device)
        policy = self.policy.eval()
        sampler_logprobs = None
        if args.use_vllm:
            sampled, sampler_logprobs = self._vllm_sample(prompt_ids)
            out = torch.cat([ids, sampled], 1)
        else:
            with self.accelerator.autocast(), declared_decoding(policy, self.generation_config) as config:
                out = policy.generate(input_ids=ids, attention_mask=prompt_mask, generation_config=config)
        mask = core.response_mask(out[:, width:], self.stop_ids)  # truncate after the first EOS
        responses = torch.where(mask.bool(), out[:, width:], tok.pad_token_id)
        batch = {"input_ids": torch.cat([ids, responses], 1), "attention_mask": torch.cat([prompt_mask, mask], 1),
                 "responses": responses, "mask": mask.float()}
        if sampler_logprobs is not None:
            batch["sampler_logprobs"] = torch.where(mask.bool(), sampler_logprobs, 0.0)
        n, parts = responses.size(1), {"logprobs": [], "ref_logprobs": [], "values": [], "entropy": []}
        if not with_values:
            del parts["values"], parts["entropy"]
        chunk = args.micro_batch_size
        for i in range(0, len(prompt_ids), chunk):
            ids_i, att_i, resp_i = (batch[k][i:i + chunk] for k in ("input_ids", "attention_mask", "responses"))
            with self.accelerator.autocast():
                if with_values:
                    logits, values = self.accelerator.unwrap_model(self.model)(ids_i, att_i, n)
                else:
                    logits = policy(input_ids=ids_i, attention_mask=att_i, position_ids=core.position_ids(att_i),
                                    use_cache=False, logits_to_keep=n + 1).logits[:, :-1]
                logits = logits.float() / args.temperature
                ref_model = policy if self.ref_model is None else self.ref_model
                with policy.disable_adapter() if self.ref_model is None else contextlib.nullcontext():
                    ref = ref_model(input_ids=ids_i, attention_mask=att_i, position_ids=core.position_ids(att_i),
                                    use_cache=False, logits_to_keep=n + 1).logits[:, :-1]
            parts["logprobs"].append(core.logprobs_from_logits(logits, resp_i))
            parts["ref_logprobs"].append(core.logprobs_from_logits(ref.float() / args.temperature, resp_i))
            if with_values:
                parts["values"].append(values)
                parts["entropy"].append(core.entropy_from_logits(logits))
        for key, chunks in parts.items():
            batch[key] = torch.cat(chunks) * batch["mask"]
        return batch

    def _vllm_sample(self, prompt_ids: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Responses (right-padded ids) and the engine's log-prob of each sampled token, from the colocated
        engine holding the current policy (its weights copied in after every optimisation). The seed comes from
        torch's generator, so evaluation, which re-seeds it, samples the same responses every time."""
        from align.eval import sampling

        args, device, pad = self.args, self.accelerator.device, self.tokenizer.pad_token_id
        if self.engine is None:
            longest = max(map(len, self.train_ids + self.eval_ids))
            self.engine = sampling.engine_for(self.policy, max_model_len=longest + args.max_new_tokens,
                                              seed=args.seed, where="use_vllm")
            self._engine_stale = False
        elif self._engine_stale:
            self.engine.load(self.policy)
            self._engine_stale = False
        seed = int(torch.randint(0, 2**31 - 1, (1,)))
        ids, logprobs = self.engine.sample(prompt_ids, max_new_tokens=args.max_new_tokens, stop=self.stop_ids,
                                           temperature=args.temperature, seed=seed)
        n = max(1, max(map(len, ids)))
        tokens = torch.full((len(ids), n), pad, dtype=torch.long)
        values = torch.full((len(ids), n), float("nan"))
        for row, (t, lp) in enumerate(zip(ids, logprobs)):
            tokens[row, :len(t)] = torch.tensor(t, dtype=torch.long)
            values[row, :len(lp)] = torch.tensor(lp, dtype=torch.float)
        return tokens.to(device), values.to(device)

    def score(self, rows: list, texts: list[str], columns: list[dict] | None = None,
              completion_ids: list[list[int]] | None = None) -> torch.Tensor:
        """Weighted sum of the reward model's score and each reward function's, per response. Reward functions are
        called as TRL's GRPOTrainer calls them: ``f(prompts=, completions=, completion_ids=, trainer_state=,
        **columns)`` (the dataset's other columns, e.g. a ground-truth answer), each keyword only if the function
        takes it. Completions are the decoded text: a function that reads TRL's message lists (``trl.rewards``)
        goes in through a recipe judge (``FunctionJudge``), which passes them in that shape."""
        from align.functions import accepted_keywords, columns_of

        outputs = []
        if self.judge is not None:
            with self.reward_model_context():
                outputs.append(self.judge.score(rows, texts))
        keywords = {"completion_ids": completion_ids, "trainer_state": self.state, **columns_of(columns or [])}
        outputs += [f(rows, texts, **accepted_keywords(f, keywords)) for f in self.reward_funcs]
        total = torch.zeros(len(texts))
        for weight, values in zip(self.reward_weights, outputs):
            total += weight * torch.tensor([float(v) for v in values])
        return total.to(self.accelerator.device)

    @staticmethod
    def response_ids(batch: dict) -> list[list[int]]:
        """Each sampled response's tokens, padding dropped (TRL's ``completion_ids``)."""
        return [row[mask.bool()].tolist() for row, mask in zip(batch["responses"], batch["mask"])]

    # ------------------------------------------------------------------ one PPO iteration
    def iteration(self) -> dict:
        args = self.args
        started = time.time()
        indices = self.prompt_indices(self.state.global_step)
        self.prompts_seen += indices
        batch = self.rollout([self.train_ids[i] for i in indices])
        generated = time.time()
        texts = self.tokenizer.batch_decode(batch["responses"], skip_special_tokens=True)
        raw_scores = self.score([self.train_rows[i] for i in indices], texts, [self.train_columns[i] for i in indices],
                                self.response_ids(batch))
        has_eos = (core.is_stop_token(batch["responses"], self.stop_ids) & batch["mask"].bool()).any(1)
        scores = core.shape_scores(raw_scores, has_eos, scale=args.reward_scale, shift=args.reward_shift,
                                   missing_eos_penalty=args.missing_eos_penalty, clip=args.reward_clip)
        mask, beta = batch["mask"], self.kl_ctl.value
        sampling_stats = self._sampling_stats(batch) if "sampler_logprobs" in batch else {}
        rewards, non_score = core.per_token_rewards(scores, batch["logprobs"], batch["ref_logprobs"], mask, beta,
                                                    args.kl_estimator)
        if args.whiten_rewards:
            rewards = core.masked_whiten(rewards, mask, shift_mean=False)
        advantages, returns = core.gae(rewards, batch["values"], mask, args.gamma, args.lam)
        if args.whiten_advantages:
            advantages = core.masked_whiten(advantages, mask)
        scored = time.time()
        stats = self.optimise(batch, advantages, returns)

        kl = (core.kl_estimate(batch["logprobs"], batch["ref_logprobs"], args.kl_estimator) * mask).sum(1)
        mean_kl = self._mean(kl)  # global mean over all processes' responses: what the controller sees
        self.kl_ctl.update(mean_kl, self.episodes_per_step)
        return {
            "objective/kl": mean_kl,
            "objective/entropy": self._mean(batch["entropy"].sum(1)),
            "objective/non_score_reward": self._mean(non_score.sum(1)),
            "objective/scores": self._mean(raw_scores),
            "objective/rlhf_reward": self._mean(scores + non_score.sum(1)),
            **{name: self._mean(torch.stack(values)) for name, values in stats.items()},
            "val/var_explained": self._mean(core.explained_variance(batch["values"], returns, mask)),
            "val/num_eos_tokens": self._mean(has_eos, reduction="sum"),
            "response_length": self._mean(mask.sum(1)),
            "kl_coef": beta,
            "lr": self.scheduler.get_last_lr()[0],
            "episode": (self.state.global_step + 1) * self.episodes_per_step,
            **sampling_stats,
            "time/generation": generated - started,
            "time/scoring": scored - generated,
            "time/optimization": time.time() - scored,
        }

    def _is_weights(self, batch: dict) -> torch.Tensor | None:
        """TRL's truncated importance weights of the rollout's tokens (None without vLLM or with the correction off)."""
        if "sampler_logprobs" not in batch or not self.args.vllm_importance_sampling_correction:
            return None
        return core.truncated_importance_weights(batch["logprobs"], batch["sampler_logprobs"], batch["mask"],
                                                 self.args.vllm_importance_sampling_clip_max)

    def _sampling_stats(self, batch: dict) -> dict:
        """The sampler/trainer log-prob gap on the rollout's tokens, logged under TRL's names."""
        real = batch["mask"].bool()
        gap = (batch["logprobs"] - batch["sampler_logprobs"]).abs()[real]
        gap = gap[~torch.isnan(gap)]
        stats = {"sampling/sampling_logp_difference/mean": self._mean(gap) if gap.numel() else 0.0,
                 "sampling/sampling_logp_difference/max": self.accelerator.reduce(
                     (gap.max() if gap.numel() else torch.tensor(0.0, device=real.device)), reduction="max").item()}
        weights = self._is_weights(batch)
        if weights is not None:
            stats["sampling/importance_sampling_ratio/mean"] = self._mean(weights[real])
        return stats

    def optimise(self, batch: dict, advantages: torch.Tensor, returns: torch.Tensor) -> dict[str, list]:
        """``ppo_epochs`` passes of ``num_mini_batches`` AdamW steps, each accumulated over micro-batches.

        Each micro-batch's loss is its share of the minibatch objective (``core.aggregate`` over the
        minibatch's token or response count on all processes), times the number of processes because
        gradient reduction averages over them: the update does not depend on the micro-batch size or
        on how the minibatch is spread over processes. Policy and critic gradients are clipped apart.
        """
        args, size = self.args, batch["responses"].size(0)
        mini, micro, n = size // args.num_mini_batches, args.micro_batch_size, batch["responses"].size(1)
        world = self.accelerator.num_processes
        stats = {name: [] for name in ("policy/approxkl_avg", "policy/clipfrac_avg", "loss/policy_avg", "loss/value_avg",
                                       "val/clipfrac_avg", "val/ratio", "policy/grad_norm", "val/grad_norm")}
        is_weights = self._is_weights(batch)
        policy_params = [p for p in self.policy.parameters() if p.requires_grad]
        value_params = [p for p in self.value_model.parameters() if p.requires_grad]
        self.model.train()
        for _ in range(args.ppo_epochs):
            order = torch.randperm(size, device=advantages.device)  # fresh minibatches every epoch
            for start in range(0, size, mini):
                chosen = order[start:start + mini]
                if args.loss_aggregation == "token":  # real tokens of the whole minibatch, all processes
                    total = self.accelerator.reduce(batch["mask"][chosen].sum(), reduction="sum")
                else:
                    total = float(len(chosen) * world)
                minibatch_losses = torch.zeros(2, device=advantages.device)
                for micro_start in range(start, start + mini, micro):
                    idx = order[micro_start:micro_start + micro]
                    last = micro_start + micro >= start + mini
                    with contextlib.nullcontext() if last else self.accelerator.no_sync(self.model):
                        logits, values = self.model(batch["input_ids"][idx], batch["attention_mask"][idx], n)
                        new_logp = core.logprobs_from_logits(logits.float() / args.temperature, batch["responses"][idx])
                        old_logp, m = batch["logprobs"][idx], batch["mask"][idx]
                        pg_loss, pg_clipfrac, approx_kl = core.policy_loss(
                            new_logp, old_logp, advantages[idx], m, args.cliprange, args.loss_aggregation, total,
                            is_weights=None if is_weights is None else is_weights[idx])
                        vf_loss, vf_clipfrac = core.value_loss(values, batch["values"][idx], returns[idx], m,
                                                               args.cliprange_value, args.loss_aggregation, total)
                        self.accelerator.backward((pg_loss + args.vf_coef * vf_loss) * world)
                    minibatch_losses += torch.stack([pg_loss, vf_loss]).detach() * world
                    ratio = core.masked_mean(torch.exp(new_logp - old_logp), m)
                    for name, value in (("policy/approxkl_avg", approx_kl), ("policy/clipfrac_avg", pg_clipfrac),
                                        ("val/clipfrac_avg", vf_clipfrac), ("val/ratio", ratio)):
                        stats[name].append(value.detach())
                stats["loss/policy_avg"].append(minibatch_losses[0])
                stats["loss/value_avg"].append(minibatch_losses[1])
                for name, params, limit in (("policy/grad_norm", policy_params, args.max_grad_norm),
                                            ("val/grad_norm", value_params, args.critic_max_grad_norm)):
                    if limit and params:
                        norm = self.accelerator.clip_grad_norm_(params, limit)  # the norm before clipping
                        stats[name].append(norm.full_tensor() if hasattr(norm, "full_tensor") else norm.detach())
                self.optimizer.step()
                self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
        self.model.eval()
        self._engine_stale = True  # the policy moved: the engine gets its weights before the next rollout
        return {name: values for name, values in stats.items() if values}

    @torch.no_grad()
    def evaluate(self) -> dict:
        """Mean score (weighted judges, before shaping) and mean KL (k1 summed over the response) of
        the policy's samples on the fixed eval prompts, drawn with the same seed every time."""
        totals = torch.zeros(3, device=self.accelerator.device)
        devices = [self.accelerator.device] if self.accelerator.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices), self.full_weights():  # one gather, however many batches
            torch.manual_seed(self.args.seed + EVAL_SEED + self.accelerator.process_index)
            for i in range(0, len(self.eval_ids), self.args.per_device_eval_batch_size):
                chunk = slice(i, i + self.args.per_device_eval_batch_size)
                batch = self.rollout(self.eval_ids[chunk], values=False)
                scores = self.score(self.eval_rows[chunk], self.tokenizer.batch_decode(batch["responses"], skip_special_tokens=True),
                                    self.eval_columns[chunk], self.response_ids(batch))
                kl = ((batch["logprobs"] - batch["ref_logprobs"]) * batch["mask"]).sum(1)
                totals += torch.stack([scores.sum(), kl.sum(), torch.tensor(float(len(kl)), device=kl.device)])
        score, kl, count = self.accelerator.reduce(totals, reduction="sum").tolist()
        return {"eval/score": score / max(count, 1), "eval/kl": kl / max(count, 1)}

    # ------------------------------------------------------------------ loop
    def log(self, logs: dict) -> None:
        logs = {**logs, "epoch": self.state.epoch}
        self.state.log_history.append({**logs, "step": self.state.global_step})
        self.control = self.callback_handler.on_log(self.args, self.state, self.control, logs)

    def _evaluate_and_log(self) -> None:
        metrics = self.evaluate()
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics=metrics)

    def train(self, resume_from_checkpoint: str | bool | None = None) -> TrainOutput:
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete(self.args.output_dir)  # incomplete ones set aside
            if resume_from_checkpoint is None:
                raise ValueError(f"resume_from_checkpoint=True but {self.args.output_dir} holds no checkpoint-N folder")
        if resume_from_checkpoint:
            self.load_checkpoint(resume_from_checkpoint)
        started, state = time.time(), self.state
        self.control = self.callback_handler.on_train_begin(self.args, state, self.control)
        eval_every = int(state.eval_steps)
        if eval_every and state.global_step == 0:
            self._evaluate_and_log()  # the starting point of the reward-vs-KL trajectory
        bar = tqdm(total=state.max_steps, initial=state.global_step, desc="PPO iterations",
                   disable=bool(self.args.disable_tqdm) or not self.accelerator.is_main_process)
        while state.global_step < state.max_steps and not self.control.should_training_stop:
            self.control = self.callback_handler.on_step_begin(self.args, state, self.control)
            metrics = self.iteration()
            state.global_step += 1
            state.epoch = state.global_step * self.episodes_per_step / len(self.train_ids)
            self.control = self.callback_handler.on_step_end(self.args, state, self.control)
            if self.control.should_log:
                self.log(metrics)
                self.control.should_log = False
            if eval_every and (state.global_step % eval_every == 0 or state.global_step == state.max_steps) \
                    or self.control.should_evaluate:
                self._evaluate_and_log()
                self.control.should_evaluate = False
            if self.control.should_save:
                self.save_checkpoint()
                self.control = self.callback_handler.on_save(self.args, state, self.control)
                self.control.should_save = False
            bar.update(1)
            bar.set_postfix(score=f"{metrics['objective/scores']:.3f}", kl=f"{metrics['objective/kl']:.2f}")
        bar.close()
        self.control = self.callback_handler.on_train_end(self.args, state, self.control)
        losses = [h["loss/policy_avg"] for h in state.log_history if "loss/policy_avg" in h]
        return TrainOutput(state.global_step, losses[-1] if losses else float("nan"),
                           {"train_runtime": time.time() - started, "episode": state.global_step * self.episodes_per_step})

    # ------------------------------------------------------------------ saving and resuming
    def add_callback(self, callback) -> None:
        """A ``TrainerCallback`` (class or instance), as ``Trainer.add_callback``."""
        self.callback_handler.add_callback(callback)

    def save_model(self, output_dir: str | Path | None = None) -> None:
        """The policy (the adapter under LoRA) with the tokenizer; the value model under value_model/.
        Only the main process writes. Sharded, the weights are gathered first, so every process must call
        it; otherwise calling it on the main process alone is enough (no barrier)."""
        output_dir = Path(output_dir or self.args.output_dir)
        full = self._gather_full_weights() if self.sharded else None
        if self.accelerator.is_main_process:
            policy_weights, value_weights = ({}, {}) if full is None else (
                {"state_dict": {k[len("policy."):]: v for k, v in full.items() if k.startswith("policy.")}},
                {"state_dict": {k[len("value_model."):]: v for k, v in full.items() if k.startswith("value_model.")}})
            self.policy.save_pretrained(output_dir, **policy_weights)
            self.tokenizer.save_pretrained(output_dir)
            self.value_model.save_pretrained(output_dir / VALUE_DIR, **value_weights)

    def _gather_full_weights(self) -> dict:
        """The full (unsharded) state dict of policy + critic on the main process, {} on the others. Collective."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        return get_model_state_dict(self.model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def save_state(self) -> None:
        if self.accelerator.is_main_process:
            self.state.save_to_json(str(Path(self.args.output_dir) / "trainer_state.json"))

    def save_checkpoint(self) -> None:
        """``checkpoint-N/``: policy + tokenizer and value_model/ (as ``save_model``); training_state/ (the
        trainable weights and AdamW states through torch.distributed.checkpoint: each process writes its own shard
        when sharded, the main process alone when replicated; either reloads on any number of processes);
        scheduler.pt, ppo_state.pt (KL controller), rng_state[_rank].pth (RNGs and prompts seen, per process) and
        trainer_state.json. Every process must call it."""
        import torch.distributed.checkpoint as dcp

        # written under a temporary name, renamed to checkpoint-N once complete (with its manifest)
        final = Path(self.args.output_dir) / f"checkpoint-{self.state.global_step}"
        folder = final.with_name(f".tmp-{final.name}")
        if self.accelerator.is_main_process:
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir(parents=True)
        self.accelerator.wait_for_everyone()
        self.save_model(folder)
        if self.sharded or self.accelerator.is_main_process:  # replicated, one copy is the whole state
            dcp.save(self._training_state(), checkpoint_id=str(folder / TRAINING_STATE), no_dist=not self.sharded)
        if self.accelerator.is_main_process:
            torch.save(self.scheduler.state_dict(), folder / "scheduler.pt")
            torch.save({"kl_ctl": self.kl_ctl.state_dict()}, folder / PPO_STATE)
            self.state.save_to_json(str(folder / "trainer_state.json"))
        rng = {"python": random.getstate(), "numpy": np.random.get_state(), "cpu": torch.get_rng_state(),
               "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
               "prompts_seen": self.prompts_seen}  # per process: each rolls out its own prompts
        torch.save(rng, folder / self._rng_file())
        self.accelerator.wait_for_everyone()
        if self.accelerator.is_main_process:
            write_manifest(folder)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(folder, final)
            rotate_checkpoints(self.args.output_dir, self.args.save_total_limit)
        self.accelerator.wait_for_everyone()

    def _training_state(self) -> dict:
        """What resuming needs of the model and optimizer, as torch.distributed.checkpoint state dicts (sharded
        under FSDP2): the trainable weights only (a LoRA run does not copy its frozen bases) and AdamW's states."""
        from torch.distributed.checkpoint.state_dict import get_state_dict

        optimizer = getattr(self.optimizer, "optimizer", self.optimizer)  # under accelerate's wrapper
        weights, optimizer_state = get_state_dict(self.model, optimizer)
        trainable = {name for name, p in self.accelerator.unwrap_model(self.model).named_parameters() if p.requires_grad}
        return {"model": {k: v for k, v in weights.items() if k in trainable}, "optimizer": optimizer_state}

    def _rng_file(self) -> str:  # named as transformers.Trainer names it
        return "rng_state.pth" if self.accelerator.num_processes == 1 else f"rng_state_{self.accelerator.process_index}.pth"

    def load_checkpoint(self, folder: str | Path) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_state_dict

        folder = Path(folder)
        if not (folder / TRAINING_STATE).is_dir():
            raise ValueError(f"{folder} has no {TRAINING_STATE}/ (weights and optimizer states to resume from); it was "
                             f"not written by this version of align's PPOTrainer")
        state = self._training_state()  # the structure to load into, sharded as this run is
        dcp.load(state, checkpoint_id=str(folder / TRAINING_STATE), no_dist=not self.sharded)
        set_state_dict(self.model, getattr(self.optimizer, "optimizer", self.optimizer), model_state_dict=state["model"],
                       optim_state_dict=state["optimizer"], options=StateDictOptions(strict=False))
        self.scheduler.load_state_dict(torch.load(folder / "scheduler.pt", weights_only=False))
        saved = torch.load(folder / PPO_STATE, weights_only=False)
        self.kl_ctl.load_state_dict(saved["kl_ctl"])
        self._engine_stale = True  # the policy's weights were replaced
        rng = torch.load(folder / self._rng_file(), weights_only=False)
        self.prompts_seen = list(rng["prompts_seen"])
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["cpu"])
        if rng["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        loaded = TrainerState.load_from_json(str(folder / "trainer_state.json"))
        self.state.global_step, self.state.epoch, self.state.log_history = loaded.global_step, loaded.epoch, loaded.log_history
