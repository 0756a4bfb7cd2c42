"""Checkpoints that are complete or absent, atomic writes, and a full disk said in words.

A checkpoint cut short (a full disk, SIGKILL during a save) used to be resumed from, and failed the
same way on every later run. Now every checkpoint gets a manifest, ``.align_checkpoint.json`` (each
file's size), written last when its save has finished (Trainer's ``on_save``, PPO's
``save_checkpoint``). A resume takes the newest checkpoint that is complete: its manifest's files
all there with their sizes and ``trainer_state.json`` readable; without a manifest (an older align,
or a save cut short before it) every file must load. An incomplete one is set aside as
``incomplete-checkpoint-N`` (renamed, not deleted) with a line saying why.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
from pathlib import Path

from align.errors import AlignError

MANIFEST = ".align_checkpoint.json"
SET_ASIDE = "incomplete-"
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
log = logging.getLogger("align")


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_json(path: str | Path, payload) -> None:
    """Write through a temporary name, flushed to disk, then one rename: a reader sees the old file or the new
    one, never half of one. A full disk or read-only folder is an ``AlignError`` naming the path."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(json.dumps(payload, indent=2, default=str))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise disk_error(e, path) or e
    fsync_dir(path.parent)


def write_manifest(folder: str | Path) -> None:
    """Record every file of a finished checkpoint with its size; written last, atomically."""
    folder = Path(folder)
    files = {str(p.relative_to(folder)): p.stat().st_size for p in sorted(folder.rglob("*"))
             if p.is_file() and p.name != MANIFEST and not p.name.startswith(f".{MANIFEST}.tmp")}
    atomic_write_json(folder / MANIFEST, {"files": files})


def loads(path: Path) -> bool:
    """Whether a weight or state file reads back whole (checkpoints without a manifest)."""
    try:
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(path), "pt") as f:
                for key in f.keys():
                    f.get_slice(key)
        elif path.suffix in (".pt", ".pth", ".bin"):
            import torch

            torch.load(path, map_location="cpu", weights_only=False, mmap=True)
        return True
    except Exception:  # any reading error means the file is cut short or corrupt
        return False


def problem(folder: str | Path) -> str | None:
    """Why ``folder`` cannot be resumed from, or None when it is complete."""
    folder = Path(folder)
    try:
        json.loads((folder / "trainer_state.json").read_text())
    except FileNotFoundError:
        return "trainer_state.json is missing"
    except (json.JSONDecodeError, UnicodeDecodeError, OSError):
        return "trainer_state.json is unreadable"
    if (folder / MANIFEST).exists():
        try:
            files = json.loads((folder / MANIFEST).read_text())["files"]
        except (json.JSONDecodeError, KeyError, TypeError, OSError):
            return f"its manifest {MANIFEST} is unreadable"
        for name, size in files.items():
            path = folder / name
            if not path.is_file():
                return f"{name} is missing"
            if path.stat().st_size != size:
                return f"{name} has {path.stat().st_size} bytes, {size} were written"
        return None
    for path in sorted(folder.rglob("*")):
        if path.is_file() and not loads(path):
            return f"{path.relative_to(folder)} does not load (cut short?) and the save never finished (no {MANIFEST})"
    return None


def checkpoints(out_dir: str | Path) -> list[Path]:
    """``checkpoint-N`` folders, newest first."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in out_dir.iterdir() if p.is_dir() and (m := CHECKPOINT.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def set_aside(folder: Path) -> Path:
    target = folder.with_name(SET_ASIDE + folder.name)
    n = 1
    while target.exists():
        n += 1
        target = folder.with_name(f"{SET_ASIDE}{n}-{folder.name}")
    os.rename(folder, target)
    return target


def last_complete(out_dir: str | Path, echo=None) -> str | None:
    """The newest complete checkpoint in ``out_dir`` (as a string, for ``resume_from_checkpoint``), or None.
    Incomplete newer ones are set aside with a line saying why. Main process only (it renames)."""
    for folder in checkpoints(out_dir):
        why = problem(folder)
        if why is None:
            return str(folder)
        moved = set_aside(folder)
        line = (f"{folder.name} in {Path(out_dir)} is incomplete ({why}); set aside as {moved.name}, "
                f"resuming from the previous complete checkpoint if there is one")
        echo(f"align: {line}") if echo else log.warning(line)  # the CLI logs as "align: ..."
    return None


# ------------------------------------------------------------------ disk full, read-only
DISK_ERRNOS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exhausted",
               errno.EROFS: "the file system is read-only"}
DISK_TEXT = {"No space left on device": errno.ENOSPC, "StorageFull": errno.ENOSPC, "Disk quota exceeded": errno.EDQUOT,
             "Read-only file system": errno.EROFS, "ReadOnlyFilesystem": errno.EROFS}
# torch's zip writer reports a failed write without the OS error ("unexpected pos", "file write failed"):
# a full disk when the file system has (almost) nothing left
TORCH_WRITE = ("unexpected pos", "file write failed", "PytorchStreamWriter failed")
NEARLY_FULL = 64 * 2**20


def free_bytes(path: str | Path) -> int:
    path = Path(path).absolute()
    for folder in (path, *path.parents):
        try:
            return shutil.disk_usage(folder).free
        except OSError:
            continue
    return -1


def disk_error(error: BaseException, path: str | Path) -> AlignError | None:
    """An ``AlignError`` when ``error`` (or its cause) is a full disk, an exhausted quota or a read-only file
    system while writing under ``path``; None for anything else."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        code = getattr(error, "errno", None) if isinstance(error, OSError) else None
        if code not in DISK_ERRNOS:
            text = str(error)
            code = next((c for phrase, c in DISK_TEXT.items() if phrase in text), None)
            if code is None and any(phrase in text for phrase in TORCH_WRITE) and 0 <= free_bytes(path) < NEARLY_FULL:
                code = errno.ENOSPC
        if code in DISK_ERRNOS:
            where = getattr(error, "filename", None) or path
            return AlignError(
                f"{DISK_ERRNOS[code]} while writing {where} ({free_bytes(path):,} bytes free there). Free some space "
                f"(or choose another output_dir) and run the same command again: finished stages are kept, and the "
                f"stage resumes from its last complete checkpoint (an incomplete one is set aside).")
        error = error.__cause__ or error.__context__
    return None
