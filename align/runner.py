"""Run a recipe's stages in order under accelerate: skip finished ones, resume interrupted ones.

A stage is finished when ``<stage>/.align_complete.json`` exists and holds the hash of the
stage's current fingerprint: its resolved spec and seed, the completion fingerprints of the
stages it reads, its datasets, its judges, the source files of the user modules it calls (judge
functions, dataset ``map`` functions) and align's version. The marker is written last and
atomically, so a killed run never looks finished.

Finished work is never destroyed by a failed attempt: a stage that already has a result and must
re-run is built in ``<run>/.attempts/<stage>/`` beside it (``ctx.out_dir`` points there while it runs;
``${stages.X}`` references keep naming the final folder) and swapped in only once it has
finished. A stage that starts with the same hash as an interrupted attempt resumes from that
attempt's last checkpoint; with a different hash the attempt is cleared first. Only the main
process writes; all processes wait at barriers between stages.
"""

from __future__ import annotations

import contextlib
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


def short_hash(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()[:16]


_code_seen: dict[str, str] = {}  # module -> hash of its file when this process last fingerprinted it


def module_code_hash(target: str) -> str:
    """Hash of the source file of the module in ``module:function``, found without importing it.

    A module that was edited since this process last hashed it is dropped from ``sys.modules``,
    so the stage that re-runs because of the edit imports the new code (notebooks, tests)."""
    import importlib.util
    import sys

    module = str(target).partition(":")[0].strip()
    importlib.invalidate_caches()  # a module file written a moment ago
    try:
        found = importlib.util.find_spec(module)
    except Exception:  # a parent package that fails to import, a module without a spec
        found = None
    origin = found.origin if found is not None and found.has_location else None
    if not origin or not os.path.isfile(origin):
        return "not found"  # the stage itself reports the import error
    digest = hashlib.sha256(Path(origin).read_bytes()).hexdigest()[:16]
    if _code_seen.get(module, digest) != digest:
        sys.modules.pop(module, None)
        with contextlib.suppress(OSError, NotImplementedError, ValueError):  # stale bytecode (same-second edit)
            os.remove(importlib.util.cache_from_source(origin))
    _code_seen[module] = digest
    return digest


def fingerprint_parts(recipe: Recipe, stage: Stage) -> dict[str, str] | None:
    """What determines a stage's output, part by part (so a re-run can say which part changed);
    None while an input is unfinished."""
    import align
    from align.data import fingerprint
    from align.stages import stage_module

    markers = {dep: read_marker(recipe.stages[dep].out_dir) for dep in stage.deps}
    if any(marker is None for marker in markers.values()):
        return None

    def canonical(value: Any) -> Any:
        if isinstance(value, StageRef):
            return f"stage:{value.stage}"  # its fingerprint is the part "input <stage>"
        if isinstance(value, dict):
            return {k: canonical(v) for k, v in sorted(value.items())}
        if isinstance(value, list):
            return [canonical(v) for v in value]
        return value

    module = stage_module(stage.kind)
    parts = {"spec": short_hash({"kind": stage.kind, "spec": canonical(stage.spec)}), "seed": str(recipe.seed),
             "align": str(getattr(align, "__version__", "unknown"))}
    for dep, marker in markers.items():
        parts[f"input {dep}"] = str(marker.get("fingerprint"))

    def dataset(label: str, spec: dict) -> None:
        if spec.get("map"):  # first: an edited module is re-imported by what follows
            parts[f"code {str(spec['map']).partition(':')[0]} (dataset {label} map)"] = module_code_hash(spec["map"])
        parts[f"dataset {label}"] = fingerprint(plain(spec))

    for key in getattr(module, "DATASET_KEYS", ()):
        value = stage.spec.get(key)
        if isinstance(value, str) and not isinstance(value, StageRef):
            dataset(value, recipe.datasets[value])
        elif isinstance(value, dict):
            dataset(key, value)
    for key in getattr(module, "JUDGE_KEYS", ()):
        names = stage.spec.get(key) or []
        for name in names if isinstance(names, list) else [names]:
            judge = recipe.judges[name]
            parts[f"judge {name}"] = short_hash(canonical(judge))
            if judge.get("function"):
                module_name = str(judge["function"]).partition(":")[0]
                parts[f"code {module_name} (judge {name})"] = module_code_hash(judge["function"])
    return parts


def spec_hash(recipe: Recipe, stage: Stage) -> str | None:
    """Hash of everything that determines a stage's output; None while an input is unfinished."""
    parts = fingerprint_parts(recipe, stage)
    return None if parts is None else short_hash(parts)


def rerun_reasons(marker: dict | None, parts: dict[str, str]) -> list[str]:
    """Why a finished stage's result no longer matches, from the parts recorded in its marker."""
    old = (marker or {}).get("parts")
    if not isinstance(old, dict):
        return ["fingerprint changed (result from an older align)"]
    reasons = []
    for key in [*parts, *(k for k in old if k not in parts)]:
        if old.get(key) == parts.get(key):
            continue
        if key == "align":
            reasons.append(f"code changed: align {old.get(key)} -> {parts.get(key)}")
        elif key.startswith("code "):
            reasons.append(f"code changed: {key[5:]}")
        elif key in ("spec", "seed"):
            reasons.append(f"{key} changed")
        elif key not in parts:
            reasons.append(f"{key} no longer used")
        else:
            reasons.append(f"{key} changed")
    return reasons or ["fingerprint changed"]


def plain(spec: dict) -> dict:
    """A dataset spec as the data layer takes it: references become plain folder paths."""
    return {k: str(v) if isinstance(v, StageRef) else v for k, v in spec.items()}


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def check_recipe_args(recipe: Recipe, stages: list[Stage] | None = None) -> None:
    """Type-check every stage's ``args:`` against its config class before anything runs or is written: most
    wrong types (``learning_rate: fast``) would otherwise surface as a TypeError deep inside training."""
    from align.stages import stage_module
    from align.validate import field_problems

    problems = []
    for stage in stages if stages is not None else recipe.stages.values():
        module = stage_module(stage.kind)
        if stage.spec.get("args") and hasattr(module, "config_class"):
            problems += field_problems(stage.spec["args"], module.config_class(), f"stages.{stage.name}.args",
                                       unknown=False)
    if problems:
        raise AlignError("\n".join(problems))


@dataclasses.dataclass
class StageContext:
    """What a stage's ``run`` gets: its spec, folder, datasets, configs and the process state."""

    recipe: Recipe
    stage: Stage
    state: Any  # accelerate.PartialState
    work_dir: Path | None = None  # where this attempt writes (.attempts/<stage>/ while a finished result stays)

    @property
    def name(self) -> str:
        return self.stage.name

    @property
    def spec(self) -> dict:
        return self.stage.spec

    @property
    def out_dir(self) -> Path:
        """The folder this attempt writes; it becomes ``stage.out_dir`` once the stage has finished."""
        return self.work_dir or self.stage.out_dir

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
        base = {k: v for k, v in {**common, **defaults}.items() if k in fields}
        try:
            return config_class(**{**base, **user})
        except (TypeError, ValueError) as e:
            error = e
        for key, value in user.items():  # name the argument that alone gives the same complaint
            try:
                config_class(**{**base, key: value})
            except (TypeError, ValueError) as e:
                if first_line(e) == first_line(error):
                    raise AlignError(f"{self.where(f'args.{key}')}: {config_class.__name__} rejected {value!r}: "
                                     f"{first_line(e)}") from None
        raise AlignError(f"{self.where('args')}: {config_class.__name__} rejected the arguments together: "
                         f"{first_line(error)}") from None

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
        from tqdm.auto import tqdm

        mine = range(rank, len(batches), world)
        bar = tqdm(mine, desc=f"{self.name}: {len(items)} prompts", unit="batch", disable=not self.is_main_process)
        done = {b: fn(b, batches[b]) for b in bar}
        if world > 1:
            from accelerate.utils import gather_object

            done = dict(gather_object(list(done.items())))
        return [result for b in sorted(done) for result in done[b]]

    def save(self, trainer, tokenizer) -> None:
        """Model (or adapter), tokenizer and trainer_state.json into the stage folder. Every process
        calls the trainer (sharded models gather on all ranks); only the main one writes. The model's config is
        saved as its checkpoint shipped it, apart from what the stage means to change (``restore_shipped_config``)."""
        from align.models import restore_shipped_config

        restore_shipped_config(trainer.model, self.spec.get("model", self.spec.get("policy")))
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
    check_recipe_args(recipe, stages)  # a wrong-typed arg fails here, before any folder is touched
    if state.is_main_process:
        for stage in recipe.stages.values():
            recover_stage_dir(stage.out_dir)
    state.wait_for_everyone()
    results: dict[str, dict] = {}
    for index, stage in enumerate(stages, 1):
        header = f"[{index}/{len(stages)}] {stage.name} ({stage.kind})"
        parts = fingerprint_parts(recipe, stage)
        if parts is None:
            unfinished = [d for d in stage.deps if read_marker(recipe.stages[d].out_dir) is None]
            raise AlignError(f"stage {stage.name} needs {', '.join(unfinished)} to have finished; run them first "
                             f"(drop --only, or add them to it).")
        digest = short_hash(parts)
        marker = read_marker(stage.out_dir)
        forced = force or stage.name == from_stage
        if marker and marker.get("spec_hash") == digest and not forced:
            if state.is_main_process:
                echo(f"{header}: done, skipping ({stage.out_dir})")
            results[stage.name] = {**marker.get("metrics", {}), "cached": True}
            continue
        # A finished result stays in place until the new attempt has finished; a first attempt runs in place.
        work = attempt_dir(stage.out_dir) if marker else stage.out_dir
        if state.is_main_process:
            resumes = prepare_stage_dir(work, digest, fresh=forced)
            if work != stage.out_dir:
                why = (f"forced ({'--from ' + stage.name if stage.name == from_stage else '--force'})" if forced
                       else ", ".join(rerun_reasons(marker, parts)))
                how = "resuming the interrupted attempt in" if resumes else "new result built in"
                echo(f"{header}: re-runs: {why} -> {stage.out_dir} ({how} {ATTEMPTS}/{work.name}/, swapped in "
                     f"when finished)")
            else:
                shutil.rmtree(attempt_dir(stage.out_dir), ignore_errors=True)  # stale: nothing finished to keep
                tidy_attempts(stage.out_dir)
                echo(f"{header}: {'resuming' if resumes else 'running'} -> {stage.out_dir}")
        state.wait_for_everyone()
        set_seed(recipe.seed)
        started = time.time()
        try:
            metrics = stage_module(stage.kind).run(StageContext(recipe, stage, state, work_dir=work)) or {}
        except BaseException:
            if state.is_main_process:
                discard_failed_attempt(work, stage.out_dir)
            raise
        metrics = relocate({**metrics, "stage_seconds": round(time.time() - started, 1)}, work, stage.out_dir)
        state.wait_for_everyone()
        if state.is_main_process:
            write_json_atomic(work / "metrics.json", metrics)
            finished = time.strftime("%Y-%m-%dT%H:%M:%S")
            write_json_atomic(work / MARKER, {
                "stage": stage.name, "kind": stage.kind, "spec_hash": digest, "finished_at": finished,
                "fingerprint": hashlib.sha256(f"{digest}{finished}{time.time_ns()}".encode()).hexdigest()[:16],
                "parts": parts, "metrics": metrics,
            })
            if work != stage.out_dir:
                swap_in(work, stage.out_dir)
            echo(f"{header}: finished in {metrics['stage_seconds']} s -> {stage.out_dir}")
        state.wait_for_everyone()
        results[stage.name] = metrics
    return results


ATTEMPTS = ".attempts"


def attempt_dir(stage_dir: Path) -> Path:
    """Where a stage that already has a finished result builds its next one: ``<run>/.attempts/<stage>/``
    (the same base name, so model cards and logs name the stage)."""
    return stage_dir.parent / ATTEMPTS / stage_dir.name


def old_dir(stage_dir: Path) -> Path:
    return stage_dir.parent / ATTEMPTS / f"{stage_dir.name}.old"


def tidy_attempts(stage_dir: Path) -> None:
    with contextlib.suppress(OSError):  # only when empty
        (stage_dir.parent / ATTEMPTS).rmdir()


def prepare_stage_dir(stage_dir: Path, digest: str, *, fresh: bool) -> bool:
    """Keep an interrupted attempt with the same spec (to resume); clear anything else. True when
    an interrupted attempt is kept."""
    started = stage_dir / STARTED
    try:
        same_attempt = json.loads(started.read_text()).get("spec_hash") == digest
    except (FileNotFoundError, json.JSONDecodeError):
        same_attempt = False
    if stage_dir.exists() and (fresh or not same_attempt):
        shutil.rmtree(stage_dir)
        same_attempt = False
    stage_dir.mkdir(parents=True, exist_ok=True)
    if not started.exists():
        write_json_atomic(started, {"spec_hash": digest, "started_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    return same_attempt


def swap_in(work: Path, stage_dir: Path) -> None:
    """Replace the finished result in ``stage_dir`` by the finished attempt in ``work``: two renames,
    then the old result is deleted. ``recover_stage_dir`` completes a swap cut short."""
    old = old_dir(stage_dir)
    if old.exists():
        shutil.rmtree(old)
    if stage_dir.exists():
        os.rename(stage_dir, old)
    os.rename(work, stage_dir)
    shutil.rmtree(old, ignore_errors=True)
    tidy_attempts(stage_dir)


def recover_stage_dir(stage_dir: Path) -> None:
    """After a run killed during ``swap_in``: put a finished result back in place."""
    attempt, old = attempt_dir(stage_dir), old_dir(stage_dir)
    if read_marker(attempt) is not None:  # finished, not yet swapped in: it is the newest result
        swap_in(attempt, stage_dir)
    elif old.exists() and not stage_dir.exists():
        os.rename(old, stage_dir)
    if old.exists() and read_marker(stage_dir) is not None:
        shutil.rmtree(old, ignore_errors=True)
    tidy_attempts(stage_dir)


def discard_failed_attempt(work: Path, stage_dir: Path) -> None:
    """A failed attempt with no checkpoint to resume from leaves nothing behind (e.g. a config error)."""
    if work.is_dir() and read_marker(work) is None and not any(work.glob("checkpoint-*")):
        shutil.rmtree(work, ignore_errors=True)
        tidy_attempts(stage_dir)


def relocate(value: Any, work: Path, stage_dir: Path) -> Any:
    """Paths into the attempt folder (e.g. a report's files) as they will be once it is swapped in."""
    if work == stage_dir:
        return value
    if isinstance(value, str):
        for prefix, target in ((str(work.resolve()), str(stage_dir.resolve())), (str(work), str(stage_dir))):
            if value == prefix or value.startswith(prefix + os.sep):
                return target + value[len(prefix):]
        return value
    if isinstance(value, dict):
        return {k: relocate(v, work, stage_dir) for k, v in value.items()}
    if isinstance(value, list):
        return [relocate(v, work, stage_dir) for v in value]
    return value
