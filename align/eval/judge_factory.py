"""A recipe's ``judges:`` entry -> a Judge: the one check of a judge spec and the one factory.

The recipe refuses a spec that is not exactly one kind (``judge_kind``); ``align validate`` collects every
problem of a spec (``judge_problems``); the stages build judges with ``build_judge``, which refuses the same
problems. The judges themselves live in ``judges`` (the base) and ``openai_judge``.
"""

from __future__ import annotations

from align.errors import AlignError, suggest
from align.eval import openai_judge
from align.eval.judges import FunctionJudge, Judge, LLMJudge, RewardModelJudge, check_template
from align.refs import REF_PATTERN

JUDGE_OPTIONS = {  # kind -> the options a spec of that kind may give beside it
    "function": ("tie_tolerance",),
    "reward_model": ("batch_size", "tie_tolerance", "device_map"),
    "llm": ("template", "batch_size", "reference", "tie_tolerance", "device_map"),
    "openai": openai_judge.OPTIONS,
}
MODEL_KINDS = ("reward_model", "llm")  # kinds that load a model (a folder, a stage output or a hub id)
# device_map: transformers' (e.g. "auto": a judge larger than one GPU spread over all); without it a judge sits on
# this process's device (models.placement)
OPTION_TYPES = {"tie_tolerance": float, "batch_size": int, "reference": str, "template": str, "device_map": str}


def judge_kind(spec, where: str) -> str:
    """The one kind a judge spec names (function, reward_model, llm or openai)."""
    kinds = [kind for kind in JUDGE_OPTIONS if isinstance(spec, dict) and kind in spec]
    if len(kinds) != 1:
        raise AlignError(f"{where}: expected exactly one of {', '.join(JUDGE_OPTIONS)}, e.g. "
                         f"{{function: align.data.builtin:gold_judge}}, {{reward_model: ${{stages.reward}}}}, "
                         f"{{llm: path/to/model}} or {{openai: {{base_url: URL, model: NAME}}}}; got {spec!r}.")
    return kinds[0]


def judge_problems(spec, where: str) -> list[str]:
    """Every problem of a judge spec that shows without loading it: its kind, option names, types and template."""
    from align.fields import matches

    try:
        kind = judge_kind(spec, where)
    except AlignError as e:
        return [str(e)]
    valid = (kind, *JUDGE_OPTIONS[kind])
    problems = [f"{where}.{key}: a {kind} judge has no option {key!r}.{suggest(key, valid)} Valid: {', '.join(valid)}."
                for key in spec if key not in valid]
    problems += [f"{where}.{key}: expected {tp.__name__}, got {spec[key]!r}."
                 for key, tp in OPTION_TYPES.items() if key in spec and not matches(spec[key], tp)]
    checks = [lambda: check_template(spec["template"], where.removeprefix("judges."))] \
        if isinstance(spec.get("template"), str) else []
    if kind == "openai" and not problems:
        checks.append(lambda: openai_judge.spec_options(where, spec))
    for check in checks:
        try:
            check()
        except AlignError as e:
            problems.append(str(e))
    return problems


def build_judge(name: str, spec: dict, *, stage_dirs: dict | None = None, cache_dir=None) -> Judge:
    """A judge from a recipe's ``judges.<name>`` spec; ``${stages.x}`` left unresolved is looked up in ``stage_dirs``.

    ``cache_dir`` is where an openai judge keeps its verdicts unless the spec names one (default
    ``~/.cache/align/judges``).
    """
    where = f"judges.{name}"
    problems = judge_problems(spec, where)
    if problems:
        raise AlignError("\n".join(problems))
    kind = judge_kind(spec, where)
    if kind == "openai":
        options = openai_judge.spec_options(where, spec)
        options.setdefault("cache_dir", cache_dir)
        return openai_judge.OpenAIJudge(options.pop("base_url"), name=name, **options)
    target, options = spec[kind], {k: v for k, v in spec.items() if k != kind}
    ref = REF_PATTERN.match(str(target))
    if ref:
        if not stage_dirs or ref[1] not in stage_dirs:
            raise AlignError(f"{where}.{kind}: {target} names a stage whose output folder is not known here.")
        target = stage_dirs[ref[1]]
    if kind == "function":
        return FunctionJudge(str(target), name=name, **options)
    if kind == "reward_model":
        return RewardModelJudge(target, name=name, **options)
    return LLMJudge(target, name=name, **options)
