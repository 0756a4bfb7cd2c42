"""GPU acceptance check: align's GPU paths, run once on a machine with one CUDA GPU (under 8 minutes on one GPU).

    bash benchmarks/gpu_check.sh [--out DIR] [--full] [--dry-run]    # installs the carried wheels, then runs this

Checks, each recorded as pass / fail / skip with its numbers:

1. environment: versions, the GPU, bf16 support.
2. quickstart: recipes/quickstart.yaml (shortened unless --full); every model forward of every stage on the GPU.
3. bf16_autocast: every training forward of the Trainer stages ran under bf16 autocast with float32 trainable weights;
   every frozen model ran in bf16.
4. qlora: an SFT stage with `quantization: 4bit` on the SmolLM2 replica: bitsandbytes 4-bit layers on the GPU, the
   loss finite.
5. hub_replica: recipes/hub.yaml on offline replicas (SmolLM2 as the model, Qwen2.5 as the LLM judge); every
   forward on the GPU.
6. ppo_vllm: the quickstart's PPO stage with `generation: {backend: vllm}`, if vLLM imports here and align accepts
   the key; skipped with the reason otherwise.
7. generation_speed: new tokens/s of `transformers.generate` on the quickstart's SFT model.

Every top-level transformers model forward is seen by a global forward hook (``Audit``): its stage, device, weight
dtype, autocast dtype and token count. That gives "every model on the GPU" without trusting any one loading path,
and the tokens/s of each stage (tokens through model forwards / stage seconds). Results: gpu_check.json and
gpu_check.md in --out (default $OUT, else runs/gpu_check); models and runs go to --work.

--dry-run (or ALIGN_GPU_CHECK_DRY_RUN=1) runs everything up to the first CUDA call on the CPU: the environment, every
recipe built and validated, the replicas built, the audit hook tried on one CPU forward; nothing trains.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import re
import sys
import time
import traceback
from pathlib import Path

import torch

from align.preemption import Preempted
from align.testing import ultrafeedback_rows

REPO = Path(__file__).resolve().parents[1]
BUDGET_S = 450  # checks not started by then are skipped: the whole script must stay under 8 minutes
PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "evaluate", "bitsandbytes", "vllm",
            "tokenizers", "huggingface_hub", "pyarrow", "fsspec")
# the quickstart, shortened: the same stages and datasets, fewer steps and samples (about a minute on one GPU)
QUICKSTART_SHORT = [
    "stages.pretrain.args={max_steps: 120, learning_rate: 3.0e-3, per_device_train_batch_size: 8, eval_steps: 60, "
    "save_steps: 120}",
    "stages.sft.args={max_steps: 30, learning_rate: 2.0e-3, per_device_train_batch_size: 16, max_length: 256}",
    "stages.preferences.limit=128",
    "stages.reward.args={num_train_epochs: 1, learning_rate: 1.0e-3, per_device_train_batch_size: 8}",
    "stages.ppo.args={max_steps: 8, rollout_batch_size: 16, max_new_tokens: 64, learning_rate: 1.0e-3, kl_coef: 0.05, "
    "ppo_epochs: 2, eval_steps: 4, save_steps: 8, eval_prompts: 32, per_device_eval_batch_size: 32}",
    "stages.dpo.args={beta: 0.1, num_train_epochs: 1, learning_rate: 2.0e-3, per_device_train_batch_size: 8, "
    "precompute_ref_batch_size: 64}",
    "stages.eval.limit=64",
]
# --cpu (developing this script on a CPU): the same stages again, a few steps each
QUICKSTART_MICRO = [
    "stages.pretrain.args={max_steps: 6, per_device_train_batch_size: 8, eval_steps: 6, save_steps: 6}",
    "stages.sft.args={max_steps: 4, per_device_train_batch_size: 8, max_length: 256}",
    "stages.preferences.limit=16", "stages.preferences.generation={max_new_tokens: 16, batch_size: 64}",
    "stages.reward.args={max_steps: 4, per_device_train_batch_size: 8}",
    "stages.ppo.args={max_steps: 2, rollout_batch_size: 8, max_new_tokens: 16, eval_steps: 2, save_steps: 2, "
    "eval_prompts: 8}",
    "stages.dpo.args={max_steps: 4, per_device_train_batch_size: 8}",
    "stages.eval.limit=8", "stages.eval.generation={max_new_tokens: 16, batch_size: 8}", "stages.eval.n_bootstrap=100",
]
# in this order: the cheap and most telling first, so a slow machine runs out of budget on the rest
CHECKS = ("quickstart", "bf16_autocast", "qlora", "hub_replica", "ppo_vllm", "generation_speed")
TRAINER_STAGES = ("pretrain", "sft", "reward", "dpo")  # transformers/TRL Trainer stages: bf16 autocast on a bf16 GPU


class Audit:
    """Every top-level transformers model forward (a model inside another is counted once, as the outer one):
    ``rows[(stage, model class, device type, weight dtype, autocast dtype, training)] = [forwards, tokens]``."""

    def __init__(self):
        self.stage, self.prefix, self.depth, self.rows, self.handles = "-", "", 0, {}, []
        self.inner_autocast = None  # autocast dtype per device type inside the current top-level forward

    def install(self):
        from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook
        from transformers import PreTrainedModel

        self.model_class = PreTrainedModel
        self.handles = [register_module_forward_pre_hook(self.pre),
                        register_module_forward_hook(self.post, with_kwargs=True, always_call=True)]
        return self

    def remove(self):
        for handle in self.handles:
            handle.remove()

    def pre(self, module, args):
        if self.depth and self.inner_autocast is None:
            # the first module called inside a top-level forward: accelerate's autocast wraps ``model.forward`` itself,
            # so it is on only in here, not in the top-level model's own hooks
            self.inner_autocast = {d: torch.get_autocast_dtype(d) if torch.is_autocast_enabled(d) else None
                                   for d in ("cuda", "cpu")}
        if isinstance(module, self.model_class):
            if not self.depth:
                self.inner_autocast = None
            self.depth += 1

    def post(self, module, args, kwargs, output=None):  # no output: the forward raised (always_call)
        if not isinstance(module, self.model_class):
            return
        self.depth -= 1
        if self.depth:
            return
        ids = kwargs.get("input_ids", args[0] if args and torch.is_tensor(args[0]) else None)
        embeds = kwargs.get("inputs_embeds")
        tokens = ids.numel() if ids is not None else (embeds.shape[:-1].numel() if embeds is not None else 0)
        weight = next(module.parameters(), None)
        trainable = next((p for p in module.parameters() if p.requires_grad), None) if module.training else None
        device = weight.device.type if weight is not None else "none"
        autocast = (self.inner_autocast or {}).get(device)
        autocast = str(autocast).removeprefix("torch.") if autocast is not None else None
        dtype = str((trainable if trainable is not None else weight).dtype).removeprefix("torch.") if weight is not None else "none"
        key = (self.stage, type(module).__name__, device, dtype, autocast, bool(module.training))
        row = self.rows.setdefault(key, [0, 0])
        row[0] += 1
        row[1] += int(tokens)

    def echo(self, line: str) -> None:
        """The runner's progress lines name the stage that runs next."""
        print(line, flush=True)
        match = re.match(r"\[\d+/\d+\] (\S+) \(", line)
        if match:
            self.stage = self.prefix + match[1]

    def table(self, prefix: str = "") -> list[dict]:
        return [{"stage": prefix + s, "model": m, "device": d, "dtype": t, "autocast": a, "training": tr,
                 "forwards": n, "tokens": k} for (s, m, d, t, a, tr), (n, k) in self.rows.items()]

    def tokens_by_stage(self) -> dict[str, int]:
        out = {}
        for (stage, *_), (_, tokens) in self.rows.items():
            out[stage] = out.get(stage, 0) + tokens
        return out


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def pin_mismatches() -> list[str]:
    """align's requirements (pyproject.toml) that the packages imported here do not meet: what a run may trip on."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        import tomllib
    except ImportError:  # Python 3.10
        return ["(not checked: Python 3.10 has no tomllib)"]

    from packaging.requirements import Requirement

    out = []
    for dep in tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]:
        req = Requirement(dep)
        try:
            found = version(req.name)
        except PackageNotFoundError:
            out.append(f"{req.name}: missing (align needs {req.specifier or 'it'})")
            continue
        if not req.specifier.contains(found, prereleases=True):
            out.append(f"{req.name} {found} (align needs {req.specifier})")
    return out


def environment(args) -> dict:
    import torch

    wheels = Path(os.environ.get("ALIGN_GPU_WHEELS", REPO / "benchmarks" / "wheels"))
    info = {"python": sys.version.split()[0], "versions": versions(), "cuda_available": torch.cuda.is_available(),
            "pin_mismatches": pin_mismatches(), "wheels": sorted(w.name for w in wheels.glob("*.whl"))}
    if torch.cuda.is_available():
        info.update(gpu=torch.cuda.get_device_name(0), bf16=torch.cuda.is_bf16_supported(), cuda=torch.version.cuda,
                    memory_gib=round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1))
    missing = [name for name in ("transformers", "trl", "peft", "accelerate", "datasets", "evaluate")
               if info["versions"][name] is None]
    if missing:
        return {"status": "fail", "error": f"not importable: {', '.join(missing)} (carry them: make gpu-wheels)", **info}
    if not (args.dry_run or args.cpu) and not torch.cuda.is_available():
        return {"status": "fail", "error": "no CUDA GPU visible to torch (use --dry-run on a CPU)", **info}
    return {"status": "pass", **info}


def load(recipe, overrides, out_dir):
    from align.recipe import load_recipe

    return load_recipe(recipe, overrides, output_dir=str(out_dir))


def validate(recipe) -> list[str]:
    """The problems ``align validate`` would print for ``recipe`` (empty: none)."""
    from align.validate import check_recipe

    return [str(p) for p in check_recipe(recipe).problems]


def run(recipe, audit: Audit, only=None) -> dict:
    from align.runner import run_recipe

    return run_recipe(recipe, echo=audit.echo, only=only)


def stage_numbers(results: dict, audit: Audit, prefix: str = "") -> dict:
    """Seconds and forward tokens/s of each stage that ran."""
    tokens = audit.tokens_by_stage()
    out = {}
    for name, metrics in results.items():
        seconds = metrics.get("stage_seconds")
        forward = tokens.get(prefix + name, 0)
        out[name] = {"seconds": seconds, "forward_tokens": forward,
                     "forward_tokens_per_s": round(forward / seconds) if seconds else None}
        if "tokens_per_second" in metrics:
            out[name]["train_tokens_per_s"] = round(metrics["tokens_per_second"])
    return out


def off_device(audit: Audit, prefix: str, expected: str) -> list[dict]:
    return [row for row in audit.table() if row["stage"].startswith(prefix) and row["device"] != expected]



def hub_overrides(work: Path, replicas: dict) -> list[str]:
    prefs = work / "hub_prefs.jsonl"
    prefs.write_text("".join(json.dumps(r) + "\n" for r in ultrafeedback_rows(48)))
    small = {"per_device_train_batch_size": 8, "max_length": 256}
    return [
        f"stages.sft.model={replicas['smollm2']}",
        f"judges.judge.llm={replicas['qwen2_5']}",
        # trackio is not on the GPU machine (and would write to $HF_HOME); tensorboard's files stay in the run folder
        f"tracking.report_to={'[tensorboard]' if importlib.util.find_spec('tensorboard') else 'none'}",
        "stages.eval.benchmarks=null",  # lm-eval is not on the GPU machine, and capability benchmarks are not this check's
        "datasets.chat={builtin: reviews, split: sft, limit: 64}",
        f"datasets.prefs={{path: {prefs}, convert: ultrafeedback}}",
        "datasets.prompts={builtin: reviews, split: prompts, limit: 32}",
        "datasets.eval_prompts={builtin: reviews, split: eval_prompts, limit: 16}",
        f"stages.sft.args={json.dumps({**small, 'max_steps': 8})}",
        f"stages.reward.args={json.dumps({**small, 'max_steps': 6})}",
        f"stages.dpo.args={json.dumps({**small, 'max_steps': 6})}",
        "stages.ppo.args={max_steps: 4, rollout_batch_size: 8, num_mini_batches: 1, ppo_epochs: 1, "
        "per_device_train_batch_size: 8, max_new_tokens: 32, eval_steps: 2, eval_prompts: 8, save_steps: 100}",
        "stages.eval.generation={max_new_tokens: 32, batch_size: 16}",
        "stages.eval.n_bootstrap=200",
    ]


def qlora_recipe(work: Path, model: Path):
    from align.recipe import build_recipe

    return build_recipe({
        "name": "qlora", "output_dir": str(work / "qlora"),
        "datasets": {"chat": {"builtin": "reviews", "split": "sft", "limit": 96}},
        "stages": {"sft": {"kind": "sft", "model": str(model), "dataset": "chat", "quantization": "4bit",
                           "lora": {"r": 8, "lora_alpha": 16, "target_modules": "all-linear"},
                           "args": {"max_steps": 10, "per_device_train_batch_size": 8, "max_length": 256,
                                    "learning_rate": 2.0e-4, "logging_steps": 2}}}})


def quantized_layers(model) -> dict:
    """bitsandbytes 4-bit layers of ``model`` and the devices their weights are on."""
    import bitsandbytes as bnb

    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    return {"linear4bit": len(layers), "devices": sorted({m.weight.device.type for m in layers})}


def generation_speed(model_dir: Path, n_prompts: int = 128, new_tokens: int = 64) -> dict:
    """New tokens/s of ``transformers.generate`` (align's sampler) on ``model_dir``, after one warm-up call."""
    import torch

    from align.data import load_dataset
    from align.eval.generation import generate
    from align.models import load_causal_lm, load_tokenizer

    model, tokenizer = load_causal_lm(model_dir), load_tokenizer(model_dir)
    prompts = load_dataset({"builtin": "reviews", "split": "eval_prompts", "limit": n_prompts}, name="prompts")["prompt"]
    options = dict(max_new_tokens=new_tokens, batch_size=n_prompts, seed=0, return_ids=True)
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)
    generate(model, tokenizer, prompts[:8], **options)  # warm-up (kernels, caches)
    sync()
    started = time.perf_counter()
    _, ids = generate(model, tokenizer, prompts, **options)
    sync()
    seconds = time.perf_counter() - started
    sampled = sum(len(response) for _, response in ids)
    return {"device": str(model.device), "dtype": str(model.dtype), "prompts": len(prompts), "new_tokens": sampled,
            "seconds": round(seconds, 2), "new_tokens_per_s": round(sampled / seconds)}


class Checker:
    """Runs each check, records its result (a failure does not stop the others) and rewrites the results files."""

    def __init__(self, args):
        self.args, self.results, self.started = args, {}, time.time()
        self.work = Path(args.work)
        self.work.mkdir(parents=True, exist_ok=True)
        self.expected = "cpu" if args.dry_run or args.cpu else "cuda"
        self.audit = Audit()

    def check(self, name: str, fn) -> dict:
        elapsed = time.time() - self.started
        if elapsed > BUDGET_S and not (self.args.dry_run or self.args.cpu):
            result = {"status": "skip", "reason": f"time budget: {elapsed:.0f} s spent before it started"}
        else:
            print(f"\n=== {name}", flush=True)
            begun = time.time()
            try:
                result = fn()
            except Preempted:  # SIGTERM/SIGINT (a timeout): stop here, with what was written so far
                raise
            except Exception as e:  # one failed check must not hide the others' results
                result = {"status": "fail", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-4000:]}
            result["seconds"] = round(time.time() - begun, 1)
        self.results[name] = result
        print(f"=== {name}: {result['status']} {result.get('reason') or result.get('error') or ''}".rstrip(), flush=True)
        self.write()
        return result

    def write(self) -> None:
        out = Path(self.args.out)
        out.mkdir(parents=True, exist_ok=True)
        report = {"dry_run": self.args.dry_run, "full": self.args.full, "total_seconds": round(time.time() - self.started, 1),
                  "checks": self.results, "forwards": self.audit.table()}
        (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
        (out / "gpu_check.md").write_text(markdown(report))

    def run_audited(self, recipe, prefix: str, only=None) -> tuple[dict, list[dict]]:
        """Run ``recipe`` with its forwards recorded under ``prefix``: its stages' metrics, and the forwards that
        were not on the expected device."""
        self.audit.prefix, self.audit.stage = prefix, prefix + "-"
        try:
            results = run(recipe, self.audit, only=only)
        finally:
            self.audit.prefix = ""
        return results, off_device(self.audit, prefix, self.expected)

    def placed(self, wrong: list[dict], **result) -> dict:
        if wrong:
            return {"status": "fail", "error": f"{len(wrong)} kinds of model forward not on {self.expected}",
                    "off_device_forwards": wrong, **result}
        return {"status": "pass", **result}

    # ------------------------------------------------------------------ the checks
    def replicas(self) -> dict:
        from align.testing import build_replica

        if not hasattr(self, "_replicas"):
            self._replicas = {f: build_replica(f, self.work / "replicas" / f) for f in ("smollm2", "qwen2_5")}
        return self._replicas

    def quickstart(self) -> dict:
        overrides = [] if self.args.full else QUICKSTART_MICRO if self.args.cpu else QUICKSTART_SHORT
        recipe = load(REPO / "recipes" / "quickstart.yaml", overrides, self.work / "quickstart")
        problems = validate(recipe)
        if problems:
            return {"status": "fail", "error": "align validate: " + " | ".join(problems)}
        if self.args.dry_run:
            return {"status": "pass", "reason": "dry run: recipe built and validated, not run",
                    "stages": list(recipe.stages)}
        results, wrong = self.run_audited(recipe, "")
        self.quickstart_dir = Path(recipe.output_dir)
        evaluation = json.loads((self.quickstart_dir / "eval" / "metrics.json").read_text())
        scores = {name: m["scores"][evaluation["primary_judge"]] for name, m in evaluation["policies"].items()}
        return self.placed(wrong, stages=stage_numbers(results, self.audit), gold_scores=scores)

    def hub_replica(self) -> dict:
        replicas = self.replicas()
        recipe = load(REPO / "recipes" / "hub.yaml", hub_overrides(self.work, replicas), self.work / "hub")
        problems = validate(recipe)
        if problems:
            return {"status": "fail", "error": "align validate: " + " | ".join(problems)}
        if self.args.dry_run:
            return self.audit_one_forward(replicas["smollm2"])
        results, wrong = self.run_audited(recipe, "hub/")
        return self.placed(wrong, stages=stage_numbers(results, self.audit, "hub/"))

    def audit_one_forward(self, model_dir: Path) -> dict:
        """Dry run: the audit sees a forward of a model loaded for inference, on the device expected here."""
        import torch

        from align.models import load_causal_lm

        model = load_causal_lm(model_dir)
        self.audit.stage = "dry_run"
        with torch.no_grad():
            model(input_ids=torch.tensor([[1, 2, 3, 4]], device=model.device))
        rows = [r for r in self.audit.table() if r["stage"] == "dry_run"]
        ok = len(rows) == 1 and rows[0]["device"] == self.expected and rows[0]["tokens"] == 4 and rows[0]["forwards"] == 1
        return {"status": "pass" if ok else "fail", "reason": "dry run: recipe built and validated, not run; audit hook "
                "saw one CPU forward", "audit": rows, **({} if ok else {"error": f"audit recorded {rows}"})}

    def bf16_autocast(self) -> dict:
        import torch

        if self.args.dry_run:
            return {"status": "skip", "reason": "dry run: needs the training forwards of a GPU run"}
        rows = self.audit.table()
        if not (torch.cuda.is_available() and torch.cuda.is_bf16_supported()):
            return {"status": "skip", "reason": "no GPU with bf16 here: align trains in float32"}
        training = [r for r in rows if r["training"] and r["stage"].split("/")[-1] in TRAINER_STAGES]
        frozen = [r for r in rows if not r["training"] and r["stage"].split("/")[-1] in ("preferences", "eval")]
        bad_training = [r for r in training if r["autocast"] != "bfloat16" or r["dtype"] != "float32"]
        bad_frozen = [r for r in frozen if r["dtype"] != "bfloat16"]
        ok = training and frozen and not bad_training and not bad_frozen
        return {"status": "pass" if ok else "fail", "training_forwards": sum(r["forwards"] for r in training),
                "frozen_forwards": sum(r["forwards"] for r in frozen), "not_bf16_autocast": bad_training,
                "frozen_not_bf16": bad_frozen,
                **({} if ok else {"error": "training forwards must run under bf16 autocast with float32 trainable "
                                           "weights, and frozen models in bf16"})}

    def qlora(self) -> dict:
        import align.models

        if importlib.util.find_spec("bitsandbytes") is None:
            return {"status": "skip", "reason": "bitsandbytes is not installed (make gpu-wheels carries it)"}
        recipe = qlora_recipe(self.work, self.replicas()["smollm2"])
        problems = validate(recipe)
        if problems:
            return {"status": "fail", "error": "align validate: " + " | ".join(problems)}
        if self.args.dry_run:
            return {"status": "pass", "reason": "dry run: recipe built and validated, not run"}
        loaded, real = [], align.models.load_for_training

        def keep(*args, **kwargs):
            model, tokenizer = real(*args, **kwargs)
            loaded.append(model)
            return model, tokenizer

        align.models.load_for_training = keep
        try:
            results, wrong = self.run_audited(recipe, "qlora/")
        finally:
            align.models.load_for_training = real
        metrics = results["sft"]
        layers = quantized_layers(loaded[0]) if loaded else {}
        loss = metrics.get("train_loss")
        result = self.placed(wrong, quantized=layers, train_loss=loss, stages=stage_numbers(results, self.audit, "qlora/"))
        if not (layers.get("linear4bit") and layers["devices"] == [self.expected] and loss is not None
                and math.isfinite(loss)):
            result.update(status="fail", error=f"expected bitsandbytes 4-bit layers on {self.expected} and a finite loss")
        return result

    def ppo_vllm(self) -> dict:
        if importlib.util.find_spec("vllm") is None:
            return {"status": "skip", "reason": "vLLM is not installed here"}
        overrides = ([] if self.args.full else QUICKSTART_MICRO if self.args.cpu else QUICKSTART_SHORT) + \
            ["stages.ppo.generation={backend: vllm}"]
        recipe = load(REPO / "recipes" / "quickstart.yaml", overrides, self.work / "quickstart")
        problems = [p for p in validate(recipe) if "ppo" in p]
        if problems:
            return {"status": "skip", "reason": "align does not accept generation.backend=vllm for ppo here: "
                                                + " | ".join(problems)}
        if self.args.dry_run:
            return {"status": "pass", "reason": "dry run: recipe built and validated, not run"}
        if not hasattr(self, "quickstart_dir"):
            return {"status": "skip", "reason": "needs the quickstart's stages (the quickstart check did not run)"}
        generate_seconds = self.results["quickstart"]["stages"]["ppo"]["seconds"]
        results, wrong = self.run_audited(recipe, "vllm/", only=["ppo"])
        metrics = results["ppo"]
        return self.placed(wrong, seconds_vllm=metrics.get("stage_seconds"), seconds_generate=generate_seconds,
                           stages=stage_numbers(results, self.audit, "vllm/"),
                           metrics={k: v for k, v in metrics.items() if isinstance(v, (int, float))})

    def generation_speed(self) -> dict:
        if self.args.dry_run or self.args.cpu:
            return {"status": "skip", "reason": "dry run or --cpu: measured on the GPU only"}
        if not hasattr(self, "quickstart_dir"):
            return {"status": "skip", "reason": "needs the quickstart's SFT model (the quickstart check did not run)"}
        self.audit.stage = "generation_speed"
        result = generation_speed(self.quickstart_dir / "sft")
        return {"status": "pass" if result["device"].startswith(self.expected) else "fail", **result}


def markdown(report: dict) -> str:
    lines = [f"# align GPU check{' (dry run)' if report['dry_run'] else ''}", "",
             f"Total: {report['total_seconds']} s", "", "| check | status | seconds | note |", "|---|---|---|---|"]
    for name, result in report["checks"].items():
        note = result.get("reason") or result.get("error") or ""
        lines.append(f"| {name} | {result['status']} | {result.get('seconds', '')} | {note.splitlines()[0] if note else ''} |")
    for name in ("quickstart", "hub_replica"):
        stages = report["checks"].get(name, {}).get("stages")
        if isinstance(stages, dict):
            lines += ["", f"## {name}: seconds and forward tokens/s per stage", "",
                      "| stage | seconds | forward tokens | forward tokens/s |", "|---|---|---|---|"]
            lines += [f"| {s} | {v['seconds']} | {v['forward_tokens']} | {v['forward_tokens_per_s']} |"
                      for s, v in stages.items()]
    speed = report["checks"].get("generation_speed", {})
    if "new_tokens_per_s" in speed:
        lines += ["", f"generate: {speed['new_tokens']} new tokens in {speed['seconds']} s = "
                      f"{speed['new_tokens_per_s']} tokens/s ({speed['prompts']} prompts, {speed['dtype']})"]
    lines += ["", "## model forwards", "", "| stage | model | device | dtype | autocast | training | forwards | tokens |",
              "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['stage']} | {r['model']} | {r['device']} | {r['dtype']} | {r['autocast']} | {r['training']} | "
              f"{r['forwards']} | {r['tokens']} |" for r in report["forwards"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT") or "runs/gpu_check", help="where results are written")
    parser.add_argument("--work", default=None, help="where models and runs go (default: a gpu_check_work folder "
                                                     "beside --out's parent in /tmp)")
    parser.add_argument("--full", action="store_true", help="the quickstart as written, not shortened")
    parser.add_argument("--dry-run", action="store_true", default=os.environ.get("ALIGN_GPU_CHECK_DRY_RUN") == "1",
                        help="everything up to the first CUDA call, on the CPU")
    parser.add_argument("--checks", nargs="+", choices=CHECKS, default=list(CHECKS), metavar="CHECK",
                        help=f"run only these ({', '.join(CHECKS)}); the environment is always checked")
    parser.add_argument("--cpu", action="store_true", help="for developing this script: run every check for real on "
                                                           "the CPU, expecting every model there (minutes)")
    args = parser.parse_args(argv)
    args.work = args.work or str(Path(os.environ.get("TMPDIR", "/tmp")) / f"align_gpu_check_{os.getpid()}")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    checker = Checker(args)
    env = checker.check("environment", lambda: environment(args))
    if env["status"] == "fail":
        return 1
    checker.audit.install()
    for name in args.checks:
        checker.check(name, getattr(checker, name))
    checker.audit.remove()
    checker.write()
    print("\n" + Path(args.out, "gpu_check.md").read_text())
    failed = [name for name, r in checker.results.items() if r["status"] == "fail"]
    print(f"gpu_check: {'FAILED: ' + ', '.join(failed) if failed else 'all checks passed or skipped'} "
          f"({time.time() - checker.started:.0f} s) -> {args.out}")
    return 1 if failed else 0


if __name__ == "__main__":  # vLLM spawns its engine process: nothing may run at import
    sys.exit(main())
