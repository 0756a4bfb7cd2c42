"""What a stage's ``run`` gets: ``StageContext`` (its spec, folder, datasets, library config, processes)."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

from align.errors import AlignError
from align.fields import option_problems
from align.recipe import Recipe, Stage

log = logging.getLogger("align")


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


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

    @property
    def tracking(self):
        """The recipe's trackers (``align.tracking.Tracking``; false when it has none)."""
        from align.tracking import Tracking

        return Tracking(self.recipe)

    def where(self, key: str) -> str:
        return f"stages.{self.name}.{key}"

    def dataset(self, key: str = "dataset", expected=None, tokenizer=None):
        """Load, validate and card the dataset named by ``spec[key]``."""
        from align.data import load_dataset, validate_dataset, write_data_card

        name, spec = self.recipe.dataset_spec(self.stage, key)
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
        if self.tracking and "report_to" not in user:  # the recipe's trackers, unless args.report_to says otherwise
            common.update(self.tracking.trainer_args(self.name))
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
        problems = option_problems(values, defaults, self.where(key))
        if problems:
            raise AlignError("\n".join(problems))
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

    def resume_checkpoint(self, trainer=None) -> str | None:
        """The newest complete checkpoint of this attempt (incomplete ones set aside, ``align.checkpoints``). Given
        the trainer, it also gets the callback that writes checkpoint manifests and stops cleanly on SIGTERM."""
        from align import preemption
        from align.checkpoints import last_complete

        if trainer is not None:
            trainer.add_callback(preemption.checkpoint_callback(self.name))
            if self.tracking and "report_to" not in (self.spec.get("args") or {}):
                for callback in self.tracking.callbacks(self.name):
                    trainer.add_callback(callback)
        if not self.out_dir.exists():
            return None
        checkpoint = last_complete(self.out_dir) if self.is_main_process else None  # the main process sets aside
        self.state.wait_for_everyone()
        if not self.is_main_process:
            checkpoint = last_complete(self.out_dir)
        if checkpoint:
            log.info("resuming %s from %s", self.name, checkpoint)
        return checkpoint
