"""export stage: a finished stage's model as one folder to ship (``align.export``), pushed to the Hub on request.

The same as ``align export <stage folder> <this stage's folder>``: safetensors (LoRA merged into the full-precision
base by default), tokenizer with its chat template, the run's decoding in ``generation_config.json``, the model card.
"""

from __future__ import annotations

REQUIRED = ("model",)
KEYS = {
    "model": "the stage to export: ${stages.ppo}, ${stages.dpo}, ...",
    "merge": "merge a LoRA adapter into its base (default true: one plain model); false ships the adapter, whose "
             "base must then be a Hub model (or base_model: names where it is published)",
    "dtype": "weights as saved: float32 (default), bfloat16 or float16",
    "push_to_hub": "a Hub repository id (org/name) to upload the folder to (needs network and a token)",
    "private": "create the Hub repository private (default: the Hub's default)",
    "base_model": "with merge: false, the Hub id of the adapter's base when it is a local folder",
    "model_kwargs": "how to load the model: trust_remote_code for one that ships its own code (as on the stage "
                    "that trained it)",
}
TYPES = {"merge": bool, "dtype": str, "push_to_hub": str, "private": bool, "base_model": str}


def check(spec: dict, where: str) -> list[str]:
    """``dtype`` is checked as every stage's is (float32, bfloat16, float16, auto); an export needs a definite one."""
    from align.models import model_kwargs_problems

    problems = model_kwargs_problems(spec.get("model_kwargs"), f"{where}.model_kwargs")
    if spec.get("dtype") == "auto":
        problems.append(f"{where}.dtype: an export saves one dtype; choose float32, bfloat16 or float16.")
    return problems


def model_refs(spec: dict) -> dict:
    return {"model": (spec["model"], "model")} if "model" in spec else {}


def run(ctx) -> dict:
    from align.export import export_stage

    if not ctx.is_main_process:
        return {}
    result = export_stage(ctx.spec["model"], ctx.out_dir, merge=ctx.spec.get("merge", True), dtype=ctx.spec.get("dtype"),
                          push_to_hub=ctx.spec.get("push_to_hub"), base_model=ctx.spec.get("base_model"),
                          private=ctx.spec.get("private"), model_kwargs=ctx.spec.get("model_kwargs"))
    print(f"{ctx.name}: {ctx.spec['model']} exported to {ctx.stage.out_dir}"
          + (f", pushed to {result['pushed_to']}" if result.get("pushed_to") else ""))
    return {**result, "export_dir": str(ctx.out_dir)}
