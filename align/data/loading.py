"""Dataset specs -> ``datasets.Dataset``: builtin, local files, the hub, or another stage's output.

Readers are the ``datasets`` library's own builders (json, csv, parquet, text); this module only
maps a recipe's spec onto them and turns their failures into errors a user can act on.
"""

from __future__ import annotations

import hashlib
import importlib
import json
from pathlib import Path

from align.errors import AlignError

SOURCES = ("builtin", "path", "hub", "stage_dir")
DATASET_SPEC_KEYS = frozenset({*SOURCES, "split", "seed", "size", "config", "revision", "sample_by", "rename",
                               "limit", "shuffle", "map", "convert"})
BUILDERS = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".txt": "text"}
CONVERTERS = ("hh-rlhf",)


def builder_for(path: Path) -> str:
    suffixes = [s for s in path.suffixes if s != ".gz"]
    suffix = suffixes[-1].lower() if suffixes else ""
    if suffix not in BUILDERS:
        raise AlignError(f"{path}: cannot read {suffix or 'files without an extension'}; "
                         f"supported: {', '.join(BUILDERS)} (optionally .gz).")
    return BUILDERS[suffix]


def load_files(spec: dict, name: str):
    import datasets

    paths = [Path(p) for p in (spec["path"] if isinstance(spec["path"], list) else [spec["path"]])]
    for p in paths:
        if not p.exists():
            raise AlignError(f"{name}: file {p} does not exist (relative paths are relative to the working "
                             f"directory, {Path.cwd()}).")
    builders = {builder_for(p) for p in paths}
    if len(builders) > 1:
        raise AlignError(f"{name}: the files mix formats ({', '.join(sorted(builders))}); give one kind of file per dataset.")
    builder = builders.pop()
    kwargs = {"sample_by": spec.get("sample_by", "paragraph")} if builder == "text" else {}
    try:
        return datasets.load_dataset(builder, data_files=[str(p) for p in paths], split=spec.get("split", "train"), **kwargs)
    except (ValueError, datasets.exceptions.DatasetGenerationError) as e:
        raise AlignError(f"{name}: could not read {', '.join(map(str, paths))} as {builder}: {e}") from None


def load_hub(spec: dict, name: str):
    import datasets

    try:
        return datasets.load_dataset(spec["hub"], spec.get("config"), split=spec.get("split", "train"),
                                     revision=spec.get("revision"))
    except Exception as e:  # offline, unknown id, gated: all surface as different exception types
        raise AlignError(f"{name}: could not load hub dataset {spec['hub']!r} ({type(e).__name__}: {e}). "
                         f"Without network, download it elsewhere and point to the files with path: instead.") from None


def load_stage_output(spec: dict, name: str):
    import datasets

    folder = Path(spec["stage_dir"]) / "dataset"
    if not folder.exists():
        raise AlignError(f"{name}: stage folder {spec['stage_dir']} has not produced a dataset (no {folder}); "
                         f"is it a stage that writes one, and has it finished?")
    return datasets.load_from_disk(str(folder))


def load_source(spec: dict, name: str):
    if "builtin" in spec:
        from align.data.builtin import load_builtin

        return load_builtin(spec["builtin"], spec.get("split", "train"), seed=spec.get("seed", 0), size=spec.get("size"))
    if "path" in spec:
        return load_files(spec, name)
    if "hub" in spec:
        return load_hub(spec, name)
    return load_stage_output(spec, name)


def import_function(target: str, where: str):
    module_name, _, attr = str(target).partition(":")
    if not attr:
        raise AlignError(f"{where}: expected module:function, got {target!r}.")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise AlignError(f"{where}: cannot import {target!r}: {e}") from None


def check_spec(spec: dict, name: str) -> None:
    from align.recipe import suggest

    if not isinstance(spec, dict):
        raise AlignError(f"{name}: expected a dataset spec mapping, got {spec!r}.")
    for key in spec:
        if key not in DATASET_SPEC_KEYS:
            raise AlignError(f"{name}.{key}: unknown dataset key.{suggest(key, DATASET_SPEC_KEYS)} "
                             f"Valid keys: {', '.join(sorted(DATASET_SPEC_KEYS))}.")
    sources = [k for k in SOURCES if k in spec]
    if len(sources) != 1:
        raise AlignError(f"{name}: give exactly one of builtin, path, hub or stage_dir (found {sources or 'none'}).")
    if spec.get("convert") not in (None, *CONVERTERS):
        raise AlignError(f"{name}.convert: unknown conversion {spec['convert']!r}; available: {', '.join(CONVERTERS)}.")


def load_dataset(spec: dict, *, name: str):
    """Load a dataset from its spec, then apply rename / convert / map / shuffle / limit in that order."""
    check_spec(spec, name)
    ds = load_source(spec, name)
    for old, new in (spec.get("rename") or {}).items():
        if old not in ds.column_names:
            raise AlignError(f"{name}.rename: no column {old!r}; columns are {ds.column_names}.")
        ds = ds.rename_column(old, new)
    if spec.get("convert") == "hh-rlhf":
        from align.data.hh_rlhf import convert_hh_rlhf

        ds = convert_hh_rlhf(ds, name=name)
    if spec.get("map"):
        fn = import_function(spec["map"], f"{name}.map")
        try:
            ds = ds.map(fn)
        except Exception as e:
            raise AlignError(f"{name}.map: {spec['map']} failed: {type(e).__name__}: {e}") from None
    if spec.get("shuffle"):
        ds = ds.shuffle(seed=spec.get("seed", 0))
    if spec.get("limit"):
        ds = ds.select(range(min(int(spec["limit"]), len(ds))))
    return ds


def fingerprint(spec: dict) -> str:
    """A stable hash of what a spec would load: files by path, size and mtime; stages by marker."""
    payload = dict(spec)
    if "path" in spec:
        paths = spec["path"] if isinstance(spec["path"], list) else [spec["path"]]
        payload["files"] = [[str(Path(p).resolve()), *((Path(p).stat().st_size, Path(p).stat().st_mtime_ns)
                                                      if Path(p).exists() else ())] for p in paths]
    if "stage_dir" in spec:
        marker = Path(spec["stage_dir"]) / ".align_complete.json"
        payload["marker"] = marker.read_text() if marker.exists() else None
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]
