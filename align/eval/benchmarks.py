"""Capability benchmarks beside the win rates: lm-evaluation-harness tasks on every policy (the ``[eval]`` extra).

``benchmarks: {tasks: [hellaswag, my_task], include_path: tasks/, limit: 200, num_fewshot: 0}`` on an evaluate
stage runs ``lm_eval.simple_evaluate`` with its HF backend on each policy folder (``pretrained=`` the model, or the
adapter's base with ``peft=`` the adapter), so alignment's cost in capability sits next to what it gained. A local
task YAML with a local json dataset runs offline; the harness's own tasks download their data.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from align.errors import AlignError

DEFAULTS = {"tasks": None, "include_path": None, "limit": None, "num_fewshot": None, "batch_size": 8,
            "apply_chat_template": False}
DOC = ("lm-evaluation-harness tasks run on every policy: a list of task names, or {tasks: [...], include_path: folder "
       "of task YAMLs, limit, num_fewshot, batch_size (8), apply_chat_template (false)}; needs pip install -e \".[eval]\"")


def options(value, where: str) -> dict:
    """``benchmarks:`` as options over DEFAULTS; every mistake names the field."""
    if isinstance(value, (str, list)):
        value = {"tasks": value}
    if not isinstance(value, dict):
        raise AlignError(f"{where}: expected a list of lm-eval task names or {{tasks: [...], include_path: ...}}, "
                         f"got {value!r}.")
    unknown = set(value) - set(DEFAULTS)
    if unknown:
        raise AlignError(f"{where}.{sorted(unknown)[0]}: unknown key; valid keys: {', '.join(DEFAULTS)}.")
    spec = {**DEFAULTS, **value}
    tasks = [spec["tasks"]] if isinstance(spec["tasks"], str) else spec["tasks"]
    if not tasks or not isinstance(tasks, list) or not all(isinstance(t, str) and t for t in tasks):
        raise AlignError(f"{where}.tasks: expected a non-empty list of lm-eval task names, got {spec['tasks']!r}.")
    spec["tasks"] = tasks
    if spec["include_path"] is not None and not Path(spec["include_path"]).is_dir():
        raise AlignError(f"{where}.include_path: {spec['include_path']} is not a folder of task YAML files.")
    for key, kind in (("limit", (int, float)), ("num_fewshot", int), ("batch_size", int)):
        if spec[key] is not None and (not isinstance(spec[key], kind) or isinstance(spec[key], bool) or spec[key] < 0):
            raise AlignError(f"{where}.{key}: expected a non-negative number, got {spec[key]!r}.")
    if importlib.util.find_spec("lm_eval") is None:
        raise AlignError(f"{where}: needs lm-evaluation-harness, which is not installed here: "
                         f"pip install -e \".[eval]\" (or pip install lm-eval).")
    return spec


def task_manager(spec: dict, where: str):
    """lm-eval's TaskManager: only the local folder when every task is there (indexing the harness's thousands of
    task files takes ~15 s), else the harness's tasks too. An unknown task is an error naming it."""
    from lm_eval.tasks import TaskManager

    local = TaskManager(include_path=spec["include_path"], include_defaults=False) if spec["include_path"] else None
    if local is not None and all(t in local.all_tasks for t in spec["tasks"]):
        return local
    manager = TaskManager(include_path=spec["include_path"])
    missing = [t for t in spec["tasks"] if t not in manager.all_tasks]
    if missing:
        raise AlignError(f"{where}.tasks: lm-eval knows no task {', '.join(map(repr, missing))} (neither among its own "
                         f"nor in include_path {spec['include_path']}).")
    return manager


def model_args(path) -> dict:
    """lm-eval's HF backend arguments for a policy folder: a full model, or an adapter's base plus ``peft=``."""
    import torch

    from align.models import is_adapter, resolve_model_path

    folder = resolve_model_path(path)
    args = {"dtype": "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float32"}
    if is_adapter(folder):
        base = json.loads((Path(folder) / "adapter_config.json").read_text())["base_model_name_or_path"]
        return {**args, "pretrained": base, "peft": folder, "tokenizer": folder}
    return {**args, "pretrained": folder}


def run_benchmarks(path, spec: dict, *, where: str, seed: int = 0) -> dict:
    """Every task on the policy at ``path``: ``{"<task>/<metric>": value, "<task>/<metric>_stderr": ...}``."""
    import lm_eval
    import torch

    results = lm_eval.simple_evaluate(
        model="hf", model_args=model_args(path), tasks=spec["tasks"], task_manager=task_manager(spec, where),
        num_fewshot=spec["num_fewshot"], limit=spec["limit"], batch_size=spec["batch_size"],
        device="cuda" if torch.cuda.is_available() else "cpu", apply_chat_template=spec["apply_chat_template"],
        log_samples=False, random_seed=seed, numpy_random_seed=seed, torch_random_seed=seed,
        fewshot_random_seed=seed)
    out = {}
    for task, values in (results or {}).get("results", {}).items():
        for key, value in values.items():
            metric, _, _filter = key.partition(",")
            if isinstance(value, (int, float)) and not isinstance(value, bool) and metric not in ("sample_len",):
                out[f"{task}/{metric}"] = float(value)
    return out
