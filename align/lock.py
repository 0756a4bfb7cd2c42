"""One run at a time per stage folder: a ``filelock`` lock held by the main process while it decides
about a stage and builds it.

Two runs on one output folder (the same command twice, sweep jobs sharing upstream stages, two
recipes with one ``output_dir``) would otherwise both take an unfinished stage for an interrupted one
and build it at once. With a lock per stage folder the second run waits for the first, then finds
the stage finished and skips it; parallel jobs still share finished stages. The lock file lives in
``<run>/.locks/<stage>.lock``; ``<stage>.holder.json`` beside it names the holder (host, pid, start
time) for the message a waiting run prints. A run that died leaves its holder file behind: the
next run takes the lock over (flock releases it with the process) and says so. Multi-process
launches share the main process's lock: the other ranks wait at a barrier.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
from pathlib import Path

from filelock import FileLock, Timeout

from align.errors import AlignError

LOCKS = ".locks"


def holder_info() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started_at": time.strftime("%Y-%m-%dT%H:%M:%S")}


def describe(holder: dict | None) -> str:
    if not holder:
        return "another run (holder unknown)"
    return f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started_at')}"


def pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, TypeError, ValueError):
        return True  # someone else's process, or no pid to judge by: assume alive
    return True


def unwritable(folder: Path, error: OSError) -> AlignError:
    """A folder align cannot write to, as a user-facing error naming it and the free space there."""
    from align.checkpoints import free_bytes

    why = {errno.EROFS: "the file system is read-only", errno.EACCES: "permission denied",
           errno.EPERM: "permission denied", errno.ENOSPC: "the disk is full",
           errno.EDQUOT: "the disk quota is exhausted"}.get(error.errno, error.strerror or str(error))
    return AlignError(f"output_dir {folder}: align cannot write there ({why}; {free_bytes(folder):,} bytes free). "
                      f"Choose another output_dir (--output-dir) or fix the folder's permissions or space.")


class StageLocks:
    """The stage locks of one ``run_recipe`` call: ``hold`` one stage at a time (the previous one is
    released first, so two runs never wait on each other in a cycle); everything is released on exit."""

    def __init__(self, echo=print, wait: bool = True):
        self.echo, self.wait = echo, wait
        self.held: tuple[FileLock, Path] | None = None

    def __enter__(self) -> StageLocks:
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    @staticmethod
    def paths(stage_dir: Path) -> tuple[Path, Path]:
        folder = Path(stage_dir).parent / LOCKS
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise unwritable(Path(stage_dir).parent, e) from None
        return folder / f"{Path(stage_dir).name}.lock", folder / f"{Path(stage_dir).name}.holder.json"

    def _take(self, stage_dir: Path, timeout: float) -> bool:
        lock_path, holder_path = self.paths(stage_dir)
        lock = FileLock(str(lock_path))
        try:
            lock.acquire(timeout=timeout)
        except Timeout:
            return False
        except OSError as e:
            raise unwritable(Path(stage_dir).parent, e) from None
        previous = read_holder(holder_path)
        if previous is not None:  # its owner ended without releasing: flock freed the lock with the process
            state = "no longer running" if previous.get("host") == socket.gethostname() and not pid_alive(
                previous.get("pid")) else "gone"
            self.echo(f"align: took over the lock on {stage_dir.name} left by {describe(previous)} ({state}); "
                      f"an unfinished attempt there resumes from its last complete checkpoint")
        write_holder(holder_path)
        self.held = (lock, holder_path)
        return True

    def hold(self, stage_dir: Path, state=None) -> None:
        """Release the stage held so far, then lock ``stage_dir`` (main process; the others wait at a barrier).
        Waits for a run that holds it, naming it once; with ``wait=False`` that is an ``AlignError``."""
        self.release()
        if state is None or state.is_main_process:
            if not self._take(stage_dir, timeout=0):
                lock_path, holder_path = self.paths(stage_dir)
                holder = describe(read_holder(holder_path))
                if not self.wait:
                    raise AlignError(f"stage {Path(stage_dir).name} in {Path(stage_dir).parent} is being built by "
                                     f"another run ({holder}); run again when it has finished, or without --no-wait "
                                     f"to wait for it. Lock: {lock_path}")
                self.echo(f"align: {Path(stage_dir).name} is being built by another run ({holder}); waiting for it "
                          f"(lock {lock_path})")
                self._take(stage_dir, timeout=-1)
        if state is not None:
            state.wait_for_everyone()

    def try_hold(self, stage_dir: Path) -> bool:
        """Lock ``stage_dir`` if no other run holds it (for tidying it up); False when another run does."""
        self.release()
        return self._take(stage_dir, timeout=0)

    def release(self) -> None:
        if self.held is not None:
            lock, holder_path = self.held
            self.held = None
            holder_path.unlink(missing_ok=True)
            lock.release()


def read_holder(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, OSError):
        return None


def write_holder(path: Path) -> None:
    from align.checkpoints import atomic_write_json

    atomic_write_json(path, holder_info())

