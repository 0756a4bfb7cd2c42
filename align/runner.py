"""Run a recipe's stages in order under accelerate: skip finished ones, resume interrupted ones.

A stage is finished when ``<stage>/.align_complete.json`` exists and holds the hash of the
stage's current resolved spec (which includes the completion fingerprints of the stages it
reads). The marker is written last and atomically, so a killed run never looks finished. A stage
that starts with the same hash as an interrupted attempt resumes from its last checkpoint; with a
different hash its folder is cleared first. Only the main process writes; all processes wait at
barriers between stages.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from align.errors import AlignError
from align.recipe import Recipe, Stage, StageRef

MARKER = ".align_complete.json"
STARTED = ".align_started.json"
log = logging.getLogger("align")


def read_marker(stage_dir: str | Path) -> dict | None:
    path = Path(stage_dir) / MARKER
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def write_json_atomic(path: Path, payload: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(tmp, path)


def spec_hash(recipe: Recipe, stage: Stage) -> str | None:
    """Hash of everything that determines a stage's output; None while an input is unfinished."""
    from align.data import fingerprint
    from align.stages import stage_module

    markers = {dep: read_marker(recipe.stages[dep].out_dir) for dep in stage.deps}
    if any(marker is None for marker in markers.values()):
        return None

    def canonical(value: Any) -> Any:
        if isinstance(value, StageRef):
            return f"stage:{markers[value.stage]['fingerprint']}"
        if isinstance(value, dict):
            return {k: canonical(v) for k, v in sorted(value.items())}
        if isinstance(value, list):
            return [canonical(v) for v in value]
        return value

    module = stage_module(stage.kind)
    inputs = {}
    for key in getattr(module, "DATASET_KEYS", ()):
        value = stage.spec.get(key)
        if isinstance(value, str) and not isinstance(value, StageRef):
            inputs[f"dataset:{value}"] = fingerprint(plain(recipe.datasets[value]))
        elif isinstance(value, dict):
            inputs[f"dataset:{key}"] = fingerprint(plain(value))
    for key in getattr(module, "JUDGE_KEYS", ()):
        names = stage.spec.get(key) or []
        for name in names if isinstance(names, list) else [names]:
            inputs[f"judge:{name}"] = canonical(recipe.judges[name])
    payload = {"kind": stage.kind, "seed": recipe.seed, "spec": canonical(stage.spec), "inputs": inputs}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def plain(spec: dict) -> dict:
    """A dataset spec as the data layer takes it: references become plain folder paths."""
    return {k: str(v) if isinstance(v, StageRef) else v for k, v in spec.items()}


@dataclasses.dataclass
class StageContext:
    """What a stage's ``run`` gets: its spec, folder, datasets, configs and the process state."""

    recipe: Recipe
    stage: Stage
    state: Any  # accelerate.PartialState

    @property
    def name(self) -> str:
        return self.stage.name

    @property
    def spec(self) -> dict:
        return self.stage.spec

    @property
    def out_dir(self) -> Path:
        return self.stage.out_dir

    @property
    def seed(self) -> int:
        return self.recipe.seed

    @property
    def is_main_process(self) -> bool:
        return self.state.is_main_process

    def where(self, key: str) -> str:
        return f"stages.{self.name}.{key}"

    def dataset_spec(self, key: str) -> tuple[str, dict]:
        value = self.spec[key]
        if isinstance(value, StageRef):
            return value.stage, {"stage_dir": str(value)}
        if isinstance(value, str):
            return value, self.recipe.datasets[value]
        return key, value

    def dataset(self, key: str = "dataset", expected=None, tokenizer=None):
        """Load, validate and card the dataset named by ``spec[key]``."""
        from align.data import load_dataset, validate_dataset, write_data_card

        name, spec = self.dataset_spec(key)
        spec = plain(spec)
        where = f"{self.where(key)} ({name})" if name != key else self.where(key)
        ds = load_dataset(spec, name=where)
        fmt = validate_dataset(ds, name=where, expected=expected)
        if self.is_main_process:
            write_data_card(ds, self.out_dir / f"data_card_{name}.md", name=name, spec=spec, fmt=fmt, tokenizer=tokenizer)
        return ds

    def config(self, config_class, **defaults):
        """The stage's library config: align's defaults, then the recipe's ``args`` verbatim."""
        import torch

        from align.launch import tensor_parallel_size
        from align.models import training_dtype

        if tensor_parallel_size() > 1 and not torch.cuda.is_available():
            raise AlignError(f"stages.{self.name}: training under tensor parallelism needs GPUs (accelerate accepts a "
                             f"parallelism config only with FSDP2 on GPUs). Run this stage without the tensor-parallel "
                             f"config, e.g. `--only {self.name}`, then evaluate under it.")
        fields = {f.name for f in dataclasses.fields(config_class)}
        user = dict(self.spec.get("args") or {})
        if "output_dir" in user:
            raise AlignError(f"{self.where('args.output_dir')}: align sets output_dir to the stage folder "
                             f"({self.out_dir}); change the recipe's output_dir instead.")
        common = {
            "output_dir": str(self.out_dir),
            "seed": self.seed,
            "report_to": "none",
            "logging_steps": 10,
            "save_steps": 100,
            "save_total_limit": 2,
            "gradient_checkpointing": False,  # tiny models: recomputation costs more than it saves
            "bf16": training_dtype() == torch.bfloat16,
            "fp16": False,
            "use_cpu": not torch.cuda.is_available(),
            "dataloader_num_workers": 0,
        }
        values = {k: v for k, v in {**common, **defaults}.items() if k in fields}
        values.update(user)
        try:
            return config_class(**values)
        except (TypeError, ValueError) as e:
            raise AlignError(f"{self.where('args')}: {config_class.__name__} rejected the arguments: {e}") from None

    def options(self, key: str, defaults: dict) -> dict:
        """A mapping key of the spec (e.g. ``generation``) over its defaults; unknown keys are errors."""
        values = self.spec.get(key) or {}
        if not isinstance(values, dict):
            raise AlignError(f"{self.where(key)}: expected a mapping with keys among {sorted(defaults)}, got {values!r}.")
        unknown = set(values) - set(defaults)
        if unknown:
            raise AlignError(f"{self.where(key)}: unknown keys {sorted(unknown)}; valid: {sorted(defaults)}.")
        return {**defaults, **values}

    def map_batches(self, fn, items: list, batch_size: int) -> list:
        """``fn(batch_index, batch)`` over consecutive batches of ``items``, dealt round-robin to the
        data-parallel ranks; the per-item results come back in order on every process. A sampling
        ``fn`` seeds itself with the batch index, so the result does not depend on the number of
        processes. Under tensor parallelism every process of a model's group runs the same batches."""
        from align.launch import tensor_parallel_size

        if batch_size < 1:
            raise AlignError(f"{self.where('generation.batch_size')}: expected at least 1, got {batch_size}.")
        batches = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
        tp = tensor_parallel_size()
        rank, world = self.state.process_index // tp, self.state.num_processes // tp
        done = {b: fn(b, batches[b]) for b in range(rank, len(batches), world)}
        if world > 1:
            from accelerate.utils import gather_object

            done = dict(gather_object(list(done.items())))
        return [result for b in sorted(done) for result in done[b]]

    def save(self, trainer, tokenizer) -> None:
        """Model (or adapter), tokenizer and trainer_state.json into the stage folder. Every process
        calls the trainer (sharded models gather on all ranks); only the main one writes."""
        trainer.save_model(str(self.out_dir))
        trainer.save_state()
        if self.is_main_process:
            tokenizer.save_pretrained(self.out_dir)

    def resume_checkpoint(self) -> str | None:
        from transformers.trainer_utils import get_last_checkpoint

        if not self.out_dir.exists():
            return None
        checkpoint = get_last_checkpoint(str(self.out_dir))
        if checkpoint:
            log.info("resuming %s from %s", self.name, checkpoint)
        return checkpoint


def select_stages(recipe: Recipe, only: list[str] | None, from_stage: str | None) -> list[Stage]:
    from align.recipe import suggest

    names = recipe.stage_names()
    for name in (only or []) + ([from_stage] if from_stage else []):
        if name not in names:
            raise AlignError(f"no stage named {name!r} in recipe {recipe.name}.{suggest(name, names)} Stages: {', '.join(names)}.")
    if only:
        return [recipe.stages[n] for n in names if n in only]
    if from_stage:
        return [recipe.stages[n] for n in names[names.index(from_stage):]]
    return [recipe.stages[n] for n in names]


def run_recipe(recipe: Recipe, *, only: list[str] | None = None, from_stage: str | None = None,
               force: bool = False, echo=print) -> dict[str, dict]:
    """Run the selected stages; returns each stage's metrics. ``--from X`` re-runs X even if done."""
    from accelerate import PartialState
    from transformers import set_seed

    from align.launch import launch_plan, launch_warnings
    from align.stages import stage_module

    import torch

    # cpu=True without a GPU: under `accelerate launch --multi_gpu` that gives gloo ranks, as Trainer's use_cpu does.
    state = PartialState(cpu=not torch.cuda.is_available())
    stages = select_stages(recipe, only, from_stage)
    if state.is_main_process:
        plan = launch_plan()
        parallel = "".join([f" | sharding: {plan['sharding']}" if plan["sharding"] else "",
                            f" | tensor parallel: {plan['tp_size']}" if plan["tp_size"] > 1 else ""])
        echo(f"align: recipe {recipe.name} -> {recipe.output_dir} | processes: {state.num_processes} "
             f"({state.distributed_type}){parallel} | device: {state.device}")
        for warning in launch_warnings(state.num_processes, torch.cuda.is_available()):
            echo(f"align: WARNING: {warning}")
    results: dict[str, dict] = {}
    for index, stage in enumerate(stages, 1):
        header = f"[{index}/{len(stages)}] {stage.name} ({stage.kind})"
        digest = spec_hash(recipe, stage)
        if digest is None:
            unfinished = [d for d in stage.deps if read_marker(recipe.stages[d].out_dir) is None]
            raise AlignError(f"stage {stage.name} needs {', '.join(unfinished)} to have finished; run them first "
                             f"(drop --only, or add them to it).")
        marker = read_marker(stage.out_dir)
        forced = force or stage.name == from_stage
        if marker and marker.get("spec_hash") == digest and not forced:
            if state.is_main_process:
                echo(f"{header}: done, skipping ({stage.out_dir})")
            results[stage.name] = marker.get("metrics", {})
            continue
        if state.is_main_process:
            echo(f"{header}: running -> {stage.out_dir}")
            prepare_stage_dir(stage.out_dir, digest, fresh=forced or marker is not None)
        state.wait_for_everyone()
        set_seed(recipe.seed)
        started = time.time()
        metrics = stage_module(stage.kind).run(StageContext(recipe, stage, state)) or {}
        metrics = {**metrics, "stage_seconds": round(time.time() - started, 1)}
        state.wait_for_everyone()
        if state.is_main_process:
            write_json_atomic(stage.out_dir / "metrics.json", metrics)
            finished = time.strftime("%Y-%m-%dT%H:%M:%S")
            write_json_atomic(stage.out_dir / MARKER, {
                "stage": stage.name, "kind": stage.kind, "spec_hash": digest, "finished_at": finished,
                "fingerprint": hashlib.sha256(f"{digest}{finished}{time.time_ns()}".encode()).hexdigest()[:16],
                "metrics": metrics,
            })
            echo(f"{header}: finished in {metrics['stage_seconds']} s -> {stage.out_dir}")
        state.wait_for_everyone()
        results[stage.name] = metrics
    return results


def prepare_stage_dir(stage_dir: Path, digest: str, *, fresh: bool) -> None:
    """Keep an interrupted attempt with the same spec (to resume); clear anything else."""
    started = stage_dir / STARTED
    same_attempt = started.exists() and json.loads(started.read_text()).get("spec_hash") == digest
    if stage_dir.exists() and (fresh or not same_attempt):
        shutil.rmtree(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    if not started.exists():
        write_json_atomic(started, {"spec_hash": digest, "started_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
