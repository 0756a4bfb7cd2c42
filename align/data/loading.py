"""Dataset specs -> ``datasets.Dataset``: builtin, local files, the hub, or another stage's output.

Readers are the ``datasets`` library's own builders (json, csv, parquet, text); this module only
maps a recipe's spec onto them and turns their failures into errors a user can act on.

After the source is read, the optional keys apply in this order: ``rename``, ``convert``,
``map``, ``on_invalid_rows: drop``, ``chat_template_kwargs`` (a per-row column, as TRL reads it),
``shuffle`` (with ``seed``), ``limit``. So ``rename`` can prepare columns
for ``convert``, ``shuffle`` + ``limit`` takes a random sample, and ``limit`` counts valid rows only.
``on_invalid_rows: error`` (the default) leaves rows to the stage's check, which stops at the first bad
row; ``drop`` drops every invalid row and counts them per reason in the log and the data card. Text files are one document per
file unless ``sample_by: paragraph`` or ``line`` (then blank rows are dropped).
"""

from __future__ import annotations

import glob
import logging
from pathlib import Path

from align.errors import AlignError, suggest
from align.functions import import_function

SOURCES = ("builtin", "path", "hub", "stage_dir")
OPTIONS = {  # key -> the source it is limited to (None: every source)
    "split": None, "rename": None, "limit": None, "shuffle": None, "seed": None, "map": None, "convert": None,
    "on_invalid_rows": None, "chat_template_kwargs": None,
    "size": "builtin", "config": "hub", "revision": "hub", "sample_by": "path",
}
DATASET_SPEC_KEYS = frozenset({*SOURCES, *OPTIONS})
BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}
# A text file is one document by default: a novel keeps its newlines and is not cut into
# thousands of BOS...EOS "documents"; pretraining packs it into blocks anyway.
SAMPLE_BY = ("document", "paragraph", "line")
CONVERTERS = ("hh-rlhf", "ultrafeedback", "sharegpt")
ON_INVALID_ROWS = ("error", "drop")
log = logging.getLogger("align")


def check_spec(spec, name: str) -> None:
    """Refuse unknown keys, a missing or doubled source, and values of the wrong kind, before any reading."""
    if not isinstance(spec, dict):
        raise AlignError(f"{name}: expected a dataset spec mapping like {{path: data.jsonl}} or "
                         f"{{builtin: reviews, split: sft}}, got {spec!r}.")
    for key in spec:
        if key not in DATASET_SPEC_KEYS:
            raise AlignError(f"{name}.{key}: unknown dataset key.{suggest(key, DATASET_SPEC_KEYS)} "
                             f"Valid keys: {', '.join(sorted(DATASET_SPEC_KEYS))}.")
    sources = [k for k in SOURCES if k in spec]
    if len(sources) != 1:
        raise AlignError(f"{name}: give exactly one of builtin, path, hub or stage_dir "
                         f"(found {', '.join(sources) if sources else 'none'}).")
    for key, source in OPTIONS.items():
        if key in spec and source and source not in spec:
            raise AlignError(f"{name}.{key}: only applies to {source}: datasets, not {sources[0]}:.")
    for key in ("limit", "size", "seed"):
        if key in spec and (not isinstance(spec[key], int) or isinstance(spec[key], bool) or spec[key] < 0):
            raise AlignError(f"{name}.{key}: expected a whole number >= 0, got {spec[key]!r}.")
    paths = spec.get("path")
    if "path" in spec and not (isinstance(paths, str) or (isinstance(paths, list) and paths
                                                          and all(isinstance(p, str) for p in paths))):
        raise AlignError(f"{name}.path: expected a file path or a list of them, got {paths!r}.")
    rename = spec.get("rename", {})
    if not isinstance(rename, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in rename.items()):
        raise AlignError(f"{name}.rename: expected a mapping {{old_column: new_column}}, got {rename!r}.")
    if not isinstance(spec.get("shuffle", False), bool):
        raise AlignError(f"{name}.shuffle: expected true or false, got {spec['shuffle']!r}.")
    if spec.get("sample_by", "document") not in SAMPLE_BY:
        raise AlignError(f"{name}.sample_by: expected one of {', '.join(SAMPLE_BY)}, got {spec['sample_by']!r}.")
    if spec.get("convert", CONVERTERS[0]) not in CONVERTERS:
        raise AlignError(f"{name}.convert: unknown conversion {spec['convert']!r}; available: {', '.join(CONVERTERS)}.")
    if spec.get("on_invalid_rows", "error") not in ON_INVALID_ROWS:
        raise AlignError(f"{name}.on_invalid_rows: expected error (stop at the first invalid row, the default) or drop "
                         f"(drop invalid rows and count them in the log and the data card), got {spec['on_invalid_rows']!r}.")
    if "chat_template_kwargs" in spec:
        from align.chat_templates import kwargs_problem

        problem = kwargs_problem(spec["chat_template_kwargs"], f"{name}.chat_template_kwargs")
        if problem:
            raise AlignError(problem)
    if ":" not in str(spec.get("map", ":")):
        raise AlignError(f"{name}.map: expected module:function, got {spec['map']!r}.")


def expand_paths(spec: dict) -> list[Path]:
    """The spec's files, with glob patterns (``data/*.jsonl``) expanded, in a stable order."""
    paths = spec["path"] if isinstance(spec["path"], list) else [spec["path"]]
    return [Path(q) for p in paths for q in (sorted(glob.glob(p)) if glob.has_magic(p) else [p])]


def builder_for(path: Path, name: str) -> str:
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    suffix = suffixes[-1] if suffixes else ""
    if suffix not in BUILDERS:
        raise AlignError(f"{name}: cannot read {path}: {suffix or 'files without an extension'} is not supported; "
                         f"use {', '.join(BUILDERS)} (optionally .gz).")
    return BUILDERS[suffix]


def load_files(spec: dict, name: str):
    import datasets

    paths = expand_paths(spec)
    if not paths:
        raise AlignError(f"{name}: no file matches {spec['path']!r} (relative paths are relative to the working "
                         f"directory, {Path.cwd()}).")
    for p in paths:
        if not p.is_file():
            raise AlignError(f"{name}: file {p} does not exist (relative paths are relative to the working "
                             f"directory, {Path.cwd()}).")
    builders = {builder_for(p, name) for p in paths}
    if len(builders) > 1:
        raise AlignError(f"{name}: the files mix formats ({', '.join(sorted(builders))}); give one kind of file per dataset.")
    builder = builders.pop()
    sample_by = spec.get("sample_by", "document")
    kwargs = {"sample_by": sample_by} if builder == "text" else {}
    try:
        ds = datasets.load_dataset(builder, data_files=[str(p) for p in paths], split=spec.get("split", "train"), **kwargs)
    except Exception as e:  # noqa: BLE001 -- bad JSON, ragged CSV, mismatched columns, bad split: all user data
        cause = e.__cause__ or e
        detail = " ".join(str(cause).split())[:400]  # one paragraph, even for pyarrow's multi-line cast errors
        hint = (" Each text file is one document by default; to slice a file (e.g. train[:90%]) set sample_by: "
                "paragraph or line." if builder == "text" and sample_by == "document" else "")
        raise AlignError(f"{name}: could not read {', '.join(map(str, paths))} as {builder} "
                         f"(split {spec.get('split', 'train')!r}): {type(cause).__name__}: {detail}{hint}") from None
    if builder == "text" and sample_by != "document":  # blank lines separate examples; they are not examples
        ds = ds.filter(lambda batch: [bool(t.strip()) for t in batch["text"]], batched=True)
    return ds


def load_hub(spec: dict, name: str):
    import datasets

    try:
        return datasets.load_dataset(spec["hub"], spec.get("config"), split=spec.get("split", "train"),
                                     revision=spec.get("revision"))
    except Exception as e:  # noqa: BLE001 -- offline, unknown id, gated, bad split: different types, same advice
        raise AlignError(f"{name}: could not load {spec['hub']!r} from the Hugging Face Hub: the hub could not be "
                         f"reached and it is not in the local cache, or the id/config/split is wrong "
                         f"({type(e).__name__}: {e}). Without network, download the files elsewhere and give them "
                         f"with path: instead.") from None


def load_hub_head(spec: dict, *, name: str, rows: int = 200):
    """The first ``rows`` rows of a hub dataset, streamed (nothing downloaded in full), then rename / convert /
    map / on_invalid_rows / shuffle / limit as ``load_dataset`` does: what ``align validate`` checks."""
    import itertools

    import datasets

    split = str(spec.get("split", "train")).split("[", 1)[0]  # streaming takes no slices; the head is a slice
    try:
        stream = datasets.load_dataset(spec["hub"], spec.get("config"), split=split, revision=spec.get("revision"),
                                       streaming=True)
        head = datasets.Dataset.from_list(list(itertools.islice(stream, rows)))
    except Exception as e:  # noqa: BLE001 -- unknown id, gated, bad split or config
        raise AlignError(f"{name}: could not stream {spec['hub']!r} from the Hugging Face Hub "
                         f"({type(e).__name__}: {' '.join(str(e).split())[:300]}); check the id, config and split.") from None
    return prepare(head, spec, name=name)


def load_stage_output(spec: dict, name: str):
    import datasets

    stage_dir = Path(spec["stage_dir"])
    folder = stage_dir / "dataset"
    if not folder.exists():
        raise AlignError(f"{name}: stage {stage_dir.name!r} has not produced a dataset (no {folder}); "
                         f"has it finished, and is it a stage that writes one (e.g. preferences)?")
    # In memory: trainers' .map() calls would otherwise write cache files into the finished stage's folder.
    ds = datasets.load_from_disk(str(folder), keep_in_memory=True)
    if not isinstance(ds, datasets.DatasetDict):
        return ds
    split = spec.get("split", "train")
    if split not in ds:
        raise AlignError(f"{name}: stage {stage_dir.name!r} wrote splits {list(ds)}, not {split!r}; set split:.")
    return ds[split]


def load_source(spec: dict, name: str):
    if "builtin" in spec:
        from align.data.builtin import load_builtin

        try:
            return load_builtin(spec["builtin"], spec.get("split", "train"), seed=spec.get("seed", 0), size=spec.get("size"))
        except AlignError as e:
            raise AlignError(f"{name}: {e}") from None
    if "path" in spec:
        return load_files(spec, name)
    if "hub" in spec:
        return load_hub(spec, name)
    return load_stage_output(spec, name)


def apply_map(ds, target: str, name: str):
    """``Dataset.map`` with a user's row function that returns the whole new row.

    Columns it does not return are dropped, so a function turning ``question``/``answer`` into
    ``messages`` leaves no stale columns for format detection to trip on. A failure names its row.
    """
    fn = import_function(target, f"{name}.map")

    def call(row, index):
        try:
            new = fn(row)
        except Exception as e:  # noqa: BLE001 -- the user's code; report where, not how deep
            raise AlignError(f"{name}.map: {target} failed on row {index}: {type(e).__name__}: {e}. "
                             f"Row: {str(row)[:200]}") from None
        if not isinstance(new, dict):
            raise AlignError(f"{name}.map: {target} must return the new row as a dict; on row {index} it "
                             f"returned {type(new).__name__}.")
        return new

    return ds.map(call, with_indices=True, remove_columns=ds.column_names)


def with_row_kwargs(ds, kwargs: dict):
    """The dataset's ``chat_template_kwargs:`` as TRL's per-row column (over a row's own values): SFT, DPO and reward
    render each row with it, and align's sampling stages read it the same way (``chat_templates.row_options``)."""
    if "chat_template_kwargs" not in ds.column_names:
        return ds.add_column("chat_template_kwargs", [dict(kwargs)] * len(ds))
    return ds.map(lambda row: {"chat_template_kwargs": {**{k: v for k, v in (row["chat_template_kwargs"] or {}).items()
                                                           if v is not None}, **kwargs}})


def load_dataset(spec: dict, *, name: str):
    """Load a dataset from its spec, then apply rename / convert / map / drop / shuffle / limit in that order.

    With ``on_invalid_rows: drop`` the result carries ``align_dropped`` (a ``DroppedRows``: counts per reason
    and examples), which ``write_data_card`` reports."""
    check_spec(spec, name)
    return prepare(load_source(spec, name), spec, name=name)


def prepare(ds, spec: dict, *, name: str):
    """Everything after reading the source: rename, convert, map, on_invalid_rows, shuffle, limit."""
    for old, new in (spec.get("rename") or {}).items():
        if old not in ds.column_names:
            raise AlignError(f"{name}.rename: no column {old!r}; columns are {ds.column_names}.")
        if new in ds.column_names:
            raise AlignError(f"{name}.rename: cannot rename {old!r} to {new!r}, a column of that name exists.")
        ds = ds.rename_column(old, new)
    if spec.get("convert") == "hh-rlhf":
        from align.data.hh_rlhf import convert_hh_rlhf

        ds = convert_hh_rlhf(ds, name=name)
    elif spec.get("convert"):
        from align.data.convert import CONVERT

        ds = CONVERT[spec["convert"]](ds, name=name)
    if spec.get("map"):
        ds = apply_map(ds, spec["map"], name)
    dropped = None
    if spec.get("on_invalid_rows") == "drop" and len(ds):
        from align.data.formats import drop_invalid_rows

        ds, dropped = drop_invalid_rows(ds, name=name)
        if dropped.dropped:
            log.warning("%s", dropped.summary())
    if spec.get("chat_template_kwargs"):
        ds = with_row_kwargs(ds, spec["chat_template_kwargs"])
    if spec.get("shuffle"):
        ds = ds.shuffle(seed=spec.get("seed", 0))
    if "limit" in spec:
        ds = ds.select(range(min(spec["limit"], len(ds))))
    if len(ds) == 0:
        raise AlignError(f"{name}: the dataset is empty after loading (split {spec.get('split', 'train')!r}).")
    if dropped is not None:
        ds.align_dropped = dropped  # read by write_data_card
    return ds
