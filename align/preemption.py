"""Clean preemption: SIGTERM (what SLURM and Kubernetes send before SIGKILL) or SIGINT saves a checkpoint at
the next step boundary and stops the run with exit code ``EXIT_PREEMPTED`` (75, EX_TEMPFAIL: "try again");
the same command run again resumes from that checkpoint.

The signal handler only sets a flag. ``checkpoint_callback`` (added to every Trainer and to PPO) turns it
into ``should_save`` + ``should_training_stop`` at the next ``on_step_end`` and raises ``Preempted`` once the
checkpoint is saved; between stages the runner raises it itself. It also writes each checkpoint's manifest
(``align.checkpoints``). A second signal acts at once (SIGINT: KeyboardInterrupt; SIGTERM: the default exit).
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading

EXIT_PREEMPTED = 75
SIGNALS = (signal.SIGTERM, signal.SIGINT)
_received: list[str] = []  # names of the signals received; kept until a Preempted exception ends the run


class Preempted(Exception):
    """The run stopped on a signal after saving what it had; not a user mistake (exit 75, not 2)."""


def _handler(signum, frame) -> None:
    name = signal.Signals(signum).name
    _received.append(name)
    for sig in SIGNALS:  # the next one acts at once
        signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
    # os.write, not print: a handler that prints while the main thread prints raises "reentrant call"
    os.write(2, f"align: {name} received: saving a checkpoint at the next step boundary, then stopping "
                f"(send it again to stop at once)\n".encode())


@contextlib.contextmanager
def handle_signals():
    """SIGTERM and SIGINT set the preemption flag while the block runs (main thread only; nested uses are no-ops)."""
    if threading.current_thread() is not threading.main_thread() or signal.getsignal(signal.SIGTERM) is _handler:
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in SIGNALS}
    for sig in SIGNALS:
        signal.signal(sig, _handler)
    try:
        yield
    except Preempted:
        _received.clear()  # handled: the run has stopped
        raise
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def requested() -> bool:
    """Whether this process or any other process of the launch received a signal (a collective when distributed)."""
    import torch
    import torch.distributed as dist

    flag = bool(_received)
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        backend = dist.get_backend()
        device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
        value = torch.tensor([float(flag)], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        flag = bool(value.item())
    return flag


def resume_hint() -> str:
    import shlex

    command = " ".join(shlex.quote(a) for a in [os.path.basename(sys.argv[0]) or "align", *sys.argv[1:]])
    return f"run the same command again to resume ({command})" if "run" in sys.argv[1:] else "run it again to resume"


def check(stage: str, state=None) -> None:
    """Between stages: stop before starting ``stage`` if a signal came (every process agrees)."""
    if requested():
        raise Preempted(f"preempted ({', '.join(_received) or 'signal on another process'}) before stage {stage}; "
                        f"finished stages are kept; {resume_hint()}.")


def checkpoint_callback(stage: str):
    """A ``TrainerCallback``: a manifest for every checkpoint; on a signal, a checkpoint at the next step boundary,
    then ``Preempted``. Its class is built on first use (importing transformers is slow for ``align --help``)."""
    global _callback_class
    if _callback_class is None:
        from transformers import TrainerCallback

        class _CheckpointCallback(TrainerCallback):
            def __init__(self, stage: str):
                self.stage, self.stopping = stage, False

            def on_step_end(self, args, state, control, **kwargs):
                if requested():
                    self.stopping = control.should_save = control.should_training_stop = True
                return control

            def on_save(self, args, state, control, **kwargs):
                import torch.distributed as dist

                from align.checkpoints import MANIFEST, write_manifest

                if dist.is_available() and dist.is_initialized():  # every rank has written its part
                    dist.barrier()
                folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
                if state.is_world_process_zero and os.path.isdir(folder) and \
                        not os.path.exists(os.path.join(folder, MANIFEST)):
                    write_manifest(folder)
                if self.stopping:
                    raise Preempted(f"preempted ({', '.join(_received) or 'signal on another process'}) in stage "
                                    f"{self.stage} at step {state.global_step}: checkpoint-{state.global_step} saved "
                                    f"in {args.output_dir}; {resume_hint()}.")
                return control

        _callback_class = _CheckpointCallback
    return _callback_class(stage)


_callback_class = None
