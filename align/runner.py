"""Run a recipe: execute the plan (``align.state.plan``) stage by stage under accelerate.

The run state (markers, fingerprints, attempts) and the decision of what runs and why live in
``align.state``; what a stage gets is ``align.stages.context.StageContext``. Here: the order of
things. A stage that must run is built in its own folder or, when a finished result exists, in
``<run>/.attempts/<stage>/`` and swapped in once finished; only the main process writes, and all
processes wait at barriers between stages.
"""

from __future__ import annotations

import logging
import shutil
import time

from align import preemption
from align.checkpoints import disk_error
from align.errors import AlignError
from align.lock import StageLocks
from align.model_cards import refresh_run, write_stage_card
from align.recipe import Recipe
from align.stages.context import StageContext
from align.state import (ATTEMPTS, attempt_dir, discard_failed_attempt, fingerprint_parts, plan, prepare_stage_dir,
                         read_marker, recover_stage_dir, relocate, rerun_reasons, select_stages, short_hash, swap_in,
                         tidy_attempts, write_json_atomic, write_marker)

log = logging.getLogger("align")


def check_stages(recipe: Recipe, names: list[str]) -> None:
    """Every selected stage's own checks (args types, LoRA, options ...) before anything runs or is written: most
    wrong types (``learning_rate: fast``) would otherwise surface as a TypeError deep inside training."""
    from align.stages import stage_kind

    problems = [p for name in names for p in stage_kind(recipe.stages[name].kind).check(recipe.stages[name].spec,
                                                                                         f"stages.{name}")]
    if problems:
        raise AlignError("\n".join(problems))


def run_recipe(recipe: Recipe, *, only: list[str] | None = None, from_stage: str | None = None,
               force: bool = False, echo=print, checked: bool = False, wait: bool = True) -> dict[str, dict]:
    """Run the stages the plan selects; returns each stage's metrics (``cached: True`` for those it skipped).
    ``--from X`` re-runs X even if done. ``checked``: the caller has run the stages' checks (``align run`` does,
    through ``align.validate.check_recipe``), so they are not run twice.

    Each stage is built under its lock (``align.lock``: another run on the folder waits, or with ``wait=False``
    stops); SIGTERM/SIGINT save a checkpoint and raise ``preemption.Preempted``."""
    with StageLocks(echo=echo, wait=wait) as locks, preemption.handle_signals():
        return _run_recipe(recipe, only=only, from_stage=from_stage, force=force, echo=echo, checked=checked,
                           locks=locks)


def _run_recipe(recipe: Recipe, *, only: list[str] | None, from_stage: str | None, force: bool, echo,
                checked: bool, locks: StageLocks) -> dict[str, dict]:
    from accelerate import PartialState
    from transformers import set_seed

    from align.launch import launch_plan, launch_warnings
    from align.stages import stage_kind

    import torch

    # cpu=True without a GPU: under `accelerate launch --multi_gpu` that gives gloo ranks, as Trainer's use_cpu does.
    state = PartialState(cpu=not torch.cuda.is_available())
    selected = select_stages(recipe, only, from_stage)  # an unknown --only/--from name fails before anything else
    if state.is_main_process:
        launch = launch_plan()
        parallel = "".join([f" | sharding: {launch['sharding']}" if launch["sharding"] else "",
                            f" | tensor parallel: {launch['tp_size']}" if launch["tp_size"] > 1 else ""])
        echo(f"align: recipe {recipe.name} -> {recipe.output_dir} | processes: {state.num_processes} "
             f"({state.distributed_type}){parallel} | device: {state.device}")
        for warning in launch_warnings(state.num_processes, torch.cuda.is_available()):
            echo(f"align: WARNING: {warning}")
    if not checked:  # a wrong-typed arg fails here, before any folder is touched
        check_stages(recipe, [s.name for s in selected])
    if state.is_main_process:
        for stage in recipe.stages.values():
            if locks.try_hold(stage.out_dir):  # a stage another run is building is left to it
                recover_stage_dir(stage.out_dir)
        locks.release()
    state.wait_for_everyone()
    steps = [s for s in plan(recipe, only=only, from_stage=from_stage, force=force) if s.action != "skip"]
    results: dict[str, dict] = {}
    for index, step in enumerate(steps, 1):
        stage = recipe.stages[step.stage]
        header = f"[{index}/{len(steps)}] {stage.name} ({stage.kind})"
        preemption.check(stage.name)  # a signal between stages stops here
        forced = step.reason == "forced"
        if step.action != "cached":
            locks.hold(stage.out_dir, state)  # one run builds a stage at a time; it may have finished it meanwhile
        marker = read_marker(stage.out_dir)
        parts = None if step.action == "cached" else fingerprint_parts(recipe, stage)  # inputs made earlier now exist
        done_meanwhile = bool(parts and marker and marker.get("spec_hash") == short_hash(parts) and not forced)
        if step.action == "cached" or done_meanwhile:
            if state.is_main_process:
                echo(f"{header}: done, skipping ({stage.out_dir}{'; built by another run' if done_meanwhile else ''})")
            results[stage.name] = {**marker.get("metrics", {}), "cached": True}
            continue
        if parts is None:
            unfinished = [d for d in stage.deps if read_marker(recipe.stages[d].out_dir) is None]
            raise AlignError(f"stage {stage.name} needs {', '.join(unfinished)} to have finished; run them first "
                             f"(drop --only, or add them to it).")
        digest = short_hash(parts)
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
            metrics = stage_kind(stage.kind).run(StageContext(recipe, stage, state, work_dir=work)) or {}
        except BaseException as error:
            if state.is_main_process:
                discard_failed_attempt(work, stage.out_dir)
            disk = disk_error(error, work)  # a full disk said in words (exit 2)
            if disk is not None:
                raise disk from error
            raise
        metrics = relocate({**metrics, "stage_seconds": round(time.time() - started, 1)}, work, stage.out_dir)
        state.wait_for_everyone()
        if state.is_main_process:
            write_json_atomic(work / "metrics.json", metrics)
            tags = {s.kind: stage_kind(s.kind).declared("CARD_TAGS", ()) for s in recipe.stages.values()}
            write_stage_card(recipe, stage.name, work, tags)  # README.md + lineage.json, before the marker
            write_marker(work, stage, digest, parts, metrics)
            if work != stage.out_dir:
                swap_in(work, stage.out_dir)
            refresh_run(recipe)  # the cards of the models this stage evaluated gain its numbers
            echo(f"{header}: finished in {metrics['stage_seconds']} s -> {stage.out_dir}")
        state.wait_for_everyone()
        results[stage.name] = metrics
    return results
