"""Model presets, building from scratch, and loading stage outputs for further training.

A stage folder holds either a full model (``config.json`` + weights) or a PEFT adapter
(``adapter_config.json``) on top of a base model; ``load_causal_lm`` and ``load_tokenizer``
accept both, so a later stage never needs to know how an earlier one was trained.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import re
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaConfig, LlamaForCausalLM

from align.errors import AlignError
from align.launch import tensor_parallel_size

log = logging.getLogger("align")

# Llama-style decoder-only sizes (RMSNorm, SwiGLU, RoPE, grouped-query attention).
PRESETS: dict[str, dict] = {
    "llama-micro": dict(hidden_size=64, intermediate_size=192, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2),
    "llama-tiny": dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2),
    "llama-small": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=6, num_attention_heads=8, num_key_value_heads=4),
    "llama-base": dict(hidden_size=512, intermediate_size=1536, num_hidden_layers=8, num_attention_heads=8, num_key_value_heads=4),
    "llama-medium": dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=16, num_attention_heads=16, num_key_value_heads=8),
}


def llama_config(model_spec: dict, tokenizer, *, field: str = "model") -> LlamaConfig:
    """Build a LlamaConfig from ``{preset: name, **overrides}`` or an explicit config dict."""
    spec = dict(model_spec or {})
    preset = spec.pop("preset", None)
    if preset is not None and preset not in PRESETS:
        raise AlignError(f"{field}.preset: unknown preset {preset!r}; choose one of {', '.join(PRESETS)} "
                         f"or give the LlamaConfig fields (hidden_size, num_hidden_layers, ...) directly.")
    fields = {**(PRESETS[preset] if preset else {}), **spec}
    fields.setdefault("max_position_embeddings", 1024)
    fields.setdefault("tie_word_embeddings", True)
    fields.setdefault("rope_parameters", {"rope_type": "default", "rope_theta": 10000.0})
    try:
        config = LlamaConfig(
            vocab_size=len(tokenizer),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **fields,
        )
    except (TypeError, ValueError) as e:
        raise AlignError(f"{field}: cannot build a Llama config from {spec!r}: {e}") from None
    if config.hidden_size % config.num_attention_heads or config.num_attention_heads % config.num_key_value_heads:
        raise AlignError(f"{field}: hidden_size ({config.hidden_size}) must be divisible by num_attention_heads "
                         f"({config.num_attention_heads}), which must be divisible by num_key_value_heads "
                         f"({config.num_key_value_heads}).")
    return config


def build_model(model_spec: dict, tokenizer, *, seed: int = 0, field: str = "model") -> LlamaForCausalLM:
    """A randomly initialised Llama whose vocabulary and special tokens match ``tokenizer``."""
    config = llama_config(model_spec, tokenizer, field=field)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def count_parameters(model: torch.nn.Module, trainable_only: bool = False) -> int:
    """Unique parameters (tied embeddings counted once)."""
    seen, total = set(), 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        total += p.numel()
    return total


def is_adapter(path: str | Path) -> bool:
    return (Path(path) / "adapter_config.json").exists()


HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)?$")


def looks_like_hub_id(value: str) -> bool:
    """``gpt2`` or ``org/name``, not a path: no leading ./ or /, at most one slash, and no local folder ``org``."""
    if not HUB_ID.match(value) or ".." in value or "--" in value or len(value) > 96:
        return False
    return "/" not in value or not Path(value.split("/")[0]).is_dir()


MODEL_FILES = ("config.json", "adapter_config.json")  # a full model, or a PEFT adapter on a base


def model_folder(path: Path, files=MODEL_FILES) -> Path | None:
    """The folder in ``path`` that holds a model (one of ``files``): ``merged/`` first (a LoRA stage's merged
    copy), else ``path`` itself; None when neither does."""
    return next((c for c in (path / "merged", path) if any((c / name).exists() for name in files)), None)


def resolve_model_path(path: str | Path, *, field: str = "model", files=MODEL_FILES) -> str:
    """Accept a stage folder, a folder with a model/adapter, or a hub id (used as given)."""
    p = Path(path)
    if not p.exists():
        if not looks_like_hub_id(str(path)):
            raise AlignError(f"{field}: {path} does not exist. Give a stage reference like ${{stages.sft}}, "
                             f"a local model folder, or a hub model id.")
        return str(path)  # hub id; transformers reports network problems itself
    folder = model_folder(p, files)
    if folder is not None:
        return str(folder.resolve())
    raise AlignError(f"{field}: {path} holds no model (no {' or '.join(files)}). "
                     f"Has the stage that writes it finished?")


# --------------------------------------------------------------------------- model options (TRL ModelConfig names)

MODEL_KWARGS = {  # what a stage's or a judge's ``model_kwargs:`` may set, named as TRL's ModelConfig names them
    "attn_implementation": "eager, sdpa, flash_attention_2, flex_attention, ... or a kernels hub repo "
                           "(org/repo[:kernel]); default: transformers' choice for the model",
    "trust_remote_code": "true runs the Python code a Hub repository ships with the model (default false)",
    "revision": "the branch, tag or commit of a Hub model to load (default: main)",
    "dtype": "float32, bfloat16, float16 or auto: the same as the stage's dtype key",
}


def attention_implementations() -> list[str]:
    """The attention implementations transformers knows (kernels from the Hub come on top: ``org/repo[:name]``)."""
    from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

    return ["eager", *ALL_ATTENTION_FUNCTIONS.valid_keys()]


def model_kwargs_problems(value, where: str) -> list[str]:
    """Every problem of a ``model_kwargs:`` mapping that shows without loading a model."""
    from align.errors import suggest
    from transformers.integrations.hub_kernels import is_kernel

    if value is None:
        return []
    if not isinstance(value, dict):
        return [f"{where}: expected a mapping with keys among {', '.join(MODEL_KWARGS)}, got {value!r}."]
    problems = []
    for key, item in value.items():
        if key not in MODEL_KWARGS:
            problems.append(f"{where}.{key}: unknown model option.{suggest(str(key), MODEL_KWARGS)} "
                            f"Valid: {', '.join(MODEL_KWARGS)}.")
        elif key == "trust_remote_code" and not isinstance(item, bool):
            problems.append(f"{where}.trust_remote_code: expected true or false, got {item!r}.")
        elif key == "revision" and not isinstance(item, str):
            problems.append(f"{where}.revision: expected a branch, tag or commit (a string), got {item!r}.")
        elif key == "dtype" and item not in DTYPES:
            problems.append(f"{where}.dtype: unknown dtype {item!r}; choose one of {', '.join(DTYPES)}.")
        elif key == "attn_implementation":
            known = attention_implementations()
            if not isinstance(item, str) or (item not in known and not is_kernel(item)):
                problems.append(f"{where}.attn_implementation: unknown attention implementation {item!r}."
                                f"{suggest(str(item), known)} Valid: {', '.join(known)}, or a kernels hub repo "
                                f"like kernels-community/flash-attn2.")
    return problems


def loading_kwargs(model_kwargs: dict | None, *, field: str = "model") -> dict:
    """The ``from_pretrained`` keywords of a checked ``model_kwargs:`` (its dtype is the caller's: see
    ``resolve_dtype``). ``trust_remote_code`` is always given, False unless asked: left unset, transformers asks on
    the terminal and waits (a stuck run); False refuses at once, and ``remote_code_refused`` says how to allow it.
    Running a repository's own code is said every time a model is loaded with it."""
    options = {k: v for k, v in (model_kwargs or {}).items() if k in ("attn_implementation", "revision")}
    options["trust_remote_code"] = bool((model_kwargs or {}).get("trust_remote_code"))
    if options["trust_remote_code"]:
        log.warning("%s: trust_remote_code is on: loading runs the Python code the model's repository ships", field)
    return options


@contextlib.contextmanager
def remote_code_refused(field: str, path):
    """transformers' refusal to run a checkpoint's own code (``auto_map`` in its config) as an error that names the
    field and says how to allow it."""
    try:
        yield
    except ValueError as e:
        if "trust_remote_code=True" not in str(e):
            raise
        raise AlignError(f"{field}: {path} ships its own model code (auto_map in its config), which runs when it "
                         f"loads; align does not run it unless told to. If you trust that code: "
                         f"`model_kwargs: {{trust_remote_code: true}}` on the stage or judge, or --trust-remote-code "
                         f"on align generate / align export.") from None


def load_tokenizer(path: str | Path, *, field: str = "model", model_kwargs: dict | None = None):
    options = {k: v for k, v in loading_kwargs(model_kwargs, field=field).items() if k != "attn_implementation"}
    path = resolve_model_path(path, field=field, files=("tokenizer_config.json",))
    with remote_code_refused(field, path):
        tokenizer = AutoTokenizer.from_pretrained(path, **options)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def base_model_path(path: str | Path) -> str:
    """For an adapter folder, the base model it was trained on; else the folder itself."""
    path = resolve_model_path(path)
    if is_adapter(path):
        return json.loads((Path(path) / "adapter_config.json").read_text())["base_model_name_or_path"]
    return path


def inference_device() -> torch.device:
    """The device this process runs its frozen models on (policies being sampled, references, judges): accelerate's
    device for the process, so its own GPU under a multi-GPU launch, and the CPU without CUDA (as the runner's
    ``PartialState`` and the trainers' ``use_cpu`` have it)."""
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available()).device


def placement(device, kwargs: dict, *, training: bool) -> torch.device | None:
    """Where a loaded model is moved: None for a model to train (its trainer places it), under a ``device_map``
    (transformers places it, e.g. ``"auto"`` over several GPUs for a judge larger than one) or with bitsandbytes
    weights (placed while quantised); else ``device``, by default (``"auto"``) ``inference_device()``."""
    if training or device is None or kwargs.get("device_map") is not None or "quantization_config" in kwargs:
        return None
    return inference_device() if device == "auto" else torch.device(device)


def load_options(model_kwargs: dict | None, *, field: str, dtype=None, training: bool = False, device="auto",
                 **extra) -> tuple[dict, torch.device | None]:
    """``from_pretrained``'s keywords for one load, and where the loaded model goes: the caller's ``extra``
    (``device_map``, ``quantization_config``, ...), the recipe's ``model_kwargs`` (``loading_kwargs``), the dtype
    (``dtype``, else ``model_kwargs.dtype``, else ``resolve_dtype``'s default for the target) and ``placement``'s
    device. ``load_causal_lm``, ``load_sequence_classifier`` and the reward-model judge take theirs from here, so
    dtype and placement follow one rule."""
    options = {**extra, **loading_kwargs(model_kwargs, field=field)}
    target = placement(device, options, training=training)
    chosen = dtype if dtype is not None else (model_kwargs or {}).get("dtype")
    options["dtype"] = resolve_dtype(chosen, training=training, field=field, device=target)
    return options, target


def load_causal_lm(path: str | Path, *, merge: bool = True, field: str = "model",
                   tensor_parallel: bool | None = None, dtype=None, training: bool = False, device="auto",
                   model_kwargs: dict | None = None, **kwargs):
    """Load a model, merging a LoRA adapter into its base so the result is a plain model.

    ``dtype`` (a torch dtype or its name, see ``resolve_dtype``) is what the weights are held in, whatever the
    checkpoint stores: by default float32 for ``training`` (master weights) and for inference on a CPU, bf16 for
    inference on a GPU that has it.

    A model for inference lands on ``device`` (``"auto"``: this process's accelerator, see ``placement``; None: left
    on the CPU); pass ``device_map`` instead to let transformers spread it over devices.

    ``tensor_parallel=True`` shards it over all processes with the model's own plan
    (``DistributedConfig(tp_plan="auto")``, see ``load_tensor_parallel``); ``None`` does so when the
    launch asked for tensor parallelism (``tensor_parallel_size() > 1``); ``False`` never does.

    ``model_kwargs`` are the recipe's model options (``MODEL_KWARGS``, checked by ``model_kwargs_problems``).
    """
    path = resolve_model_path(path, field=field)
    if tensor_parallel is None:
        tensor_parallel = tensor_parallel_size() > 1 and "distributed_config" not in kwargs
    kwargs, target = load_options(model_kwargs, field=field, dtype=dtype, training=training,
                                  device=None if tensor_parallel else device, **kwargs)
    if tensor_parallel:
        return load_tensor_parallel(path, merge=merge, field=field, **kwargs)
    with remote_code_refused(field, path):
        if is_adapter(path):
            from peft import AutoPeftModelForCausalLM

            model = AutoPeftModelForCausalLM.from_pretrained(path, **kwargs)
            model = model.merge_and_unload() if merge else model
        else:
            model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    return model if target is None else model.to(target)


def load_tensor_parallel(path: str | Path, *, merge: bool = True, field: str = "model", **kwargs):
    """``load_causal_lm`` sharded over every process (tensor parallelism only, no data parallelism).

    peft cannot merge into sharded weights, so a LoRA adapter is merged on each process first and the
    merged weights are then sharded: the whole model passes through each process's CPU memory once.
    """
    from transformers import AutoConfig
    from transformers.distributed import DistributedConfig

    path = resolve_model_path(path, field=field)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    size = tensor_parallel_size()
    launch = ("launch with `torchrun --nproc_per_node N` (and PARALLELISM_CONFIG_TP_SIZE=N) or `accelerate launch` "
              "with `parallelism_config: {parallelism_config_tp_size: N}` in its config file")
    if world < 2:
        raise AlignError(f"{field}: tensor parallelism shards a model over several processes, but this is a single "
                         f"process; {launch}, or load the model without tensor parallelism.")
    if size > 1 and size != world:
        raise AlignError(f"{field}: align shards models with tensor parallelism alone, so the tensor-parallel size "
                         f"({size}) must equal the number of processes ({world}).")
    clashing = sorted({"device_map", "quantization_config", "distributed_config"} & kwargs.keys())
    if clashing:
        raise AlignError(f"{field}: tensor parallelism cannot be combined with {', '.join(clashing)}.")
    if is_adapter(path) and not merge:
        raise AlignError(f"{field}: {path} is a LoRA adapter, which is merged into its base before sharding under "
                         f"tensor parallelism; merge=False is not supported there.")
    config = AutoConfig.from_pretrained(base_model_path(path), **config_kwargs(kwargs))
    if not getattr(config, "base_model_tp_plan", None):
        raise AlignError(f"{field}: {config.model_type} models have no tensor-parallel plan in transformers; "
                         f"load it without tensor parallelism.")
    heads = {name: getattr(config, name) for name in ("num_attention_heads", "num_key_value_heads")
             if getattr(config, name, None)}
    if any(n % world for n in heads.values()):
        raise AlignError(f"{field}: tensor parallelism over {world} processes gives each a share of the attention "
                         f"heads, so {' and '.join(f'{k} ({v})' for k, v in heads.items())} must be divisible by "
                         f"{world}; use fewer processes.")
    distributed = DistributedConfig(tp_plan="auto", tp_size=world)
    if not is_adapter(path):
        return AutoModelForCausalLM.from_pretrained(path, distributed_config=distributed, **kwargs)
    from peft import AutoPeftModelForCausalLM

    merged = AutoPeftModelForCausalLM.from_pretrained(path, **kwargs).merge_and_unload()
    model = type(merged).from_pretrained(None, config=merged.config, state_dict=merged.state_dict(),
                                         distributed_config=distributed, **kwargs)
    model.generation_config, model.name_or_path = merged.generation_config, merged.name_or_path
    return model


def config_kwargs(kwargs: dict) -> dict:
    """The keywords of a model load that ``AutoConfig.from_pretrained`` takes too."""
    return {k: v for k, v in kwargs.items() if k in ("trust_remote_code", "revision")}


def training_dtype() -> torch.dtype:
    """The compute dtype of mixed precision: bf16 only where the hardware has it (bf16 autocast on a CPU without
    AMX is 6-7x slower). Trainable weights stay float32 either way (see ``resolve_dtype``)."""
    if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float32


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16, "auto": "auto"}


def resolve_dtype(value=None, *, training: bool = False, field: str = "dtype", device: torch.device | None = None):
    """The dtype a model is loaded in. Hub checkpoints store bf16 (or fp16) weights; AdamW updating them in place
    rounds most small updates to zero (measured: 79 % of a value model's updates at lr 1e-4, every RMSNorm update),
    so trainable weights are float32 master weights and bf16 is only the autocast compute dtype. Frozen models
    (judges, evaluation) run in bf16 on a GPU that has it: on ``device`` when it is known, else where CUDA is.
    ``value`` overrides: float32 | bfloat16 | float16 | auto (the checkpoint's own dtype)."""
    if value is None:
        if training or (device is not None and device.type != "cuda"):
            return torch.float32
        return training_dtype()
    if isinstance(value, torch.dtype):
        return value
    if value not in DTYPES:
        raise AlignError(f"{field}: unknown dtype {value!r}; choose one of {', '.join(DTYPES)}.")
    return DTYPES[value]


def sequence_classifier_class(config):
    """The sequence-classification class for ``config``'s family. transformers has none for some families (Granite,
    GraniteMoE, OLMoE, ...); for those, align builds the standard one (transformers' ``GenericForSequenceClassification``:
    the causal LM's backbone plus a bias-free linear ``score`` head, as Llama's and Qwen's are) and registers it with
    ``AutoModelForSequenceClassification``, so a reward model saved from it loads like any other (and would load with
    transformers' own class, should one appear: same name, same weight names)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING, MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

    config_class = type(config)
    if config_class in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING:
        return MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING[config_class]
    if config_class not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise AlignError(f"{config.model_type} models have neither a sequence-classification nor a causal-LM class in "
                         f"transformers, so align cannot build a reward or value model from them.")
    return _scalar_head_class(config_class)


@functools.cache
def _scalar_head_class(config_class):
    from transformers import AutoModelForSequenceClassification, PreTrainedModel
    from transformers.modeling_layers import GenericForSequenceClassification
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    base = next(c for c in MODEL_FOR_CAUSAL_LM_MAPPING[config_class].__mro__[1:]
                if issubclass(c, PreTrainedModel) and c is not PreTrainedModel)
    name = base.__name__.removesuffix("PreTrainedModel") + "ForSequenceClassification"
    cls = type(name, (GenericForSequenceClassification, base), {"__module__": __name__})
    AutoModelForSequenceClassification.register(config_class, cls, exist_ok=True)
    log.info("%s has no sequence-classification class in transformers: align builds one from its backbone with a "
             "scalar score head (%s)", config_class.model_type, name)
    return cls


def scalar_head_note(path: str | Path) -> str | None:
    """What align will do for a reward or value model from ``path`` when transformers has no sequence-classification
    class for its family (``align validate`` says it); None when transformers has one."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES

    config = AutoConfig.from_pretrained(base_model_path(path))
    if config.model_type in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES:
        return None
    name = sequence_classifier_class(config).__name__
    return (f"transformers has no sequence-classification class for {config.model_type}; align builds the reward/value "
            f"model from its causal LM's backbone with a scalar score head ({name})")


def register_sequence_classifier(path: str | Path, **options) -> None:
    """Make a saved classifier of a family without a transformers class loadable by ``AutoModelForSequenceClassification``."""
    from transformers import AutoConfig

    sequence_classifier_class(AutoConfig.from_pretrained(path, **options))


def load_sequence_classifier(path: str | Path, *, field: str = "model", num_labels: int = 1, dtype=None,
                             training: bool = True, device="auto", model_kwargs: dict | None = None):
    """A scalar-head classifier (reward/value model) initialised from a causal LM or a classifier.

    A LoRA adapter is merged into its base first; the new score head starts random, the backbone
    keeps the language model's weights (InstructGPT initialises its reward model from the SFT model).
    Not ``training``, it lands on ``device`` like ``load_causal_lm``'s models.
    """
    from transformers import AutoConfig, AutoModelForSequenceClassification

    path = resolve_model_path(path, field=field)
    tokenizer = load_tokenizer(path, field=field, model_kwargs=model_kwargs)
    options, target = load_options(model_kwargs, field=field, dtype=dtype, training=training, device=device)
    with remote_code_refused(field, path):
        config = AutoConfig.from_pretrained(base_model_path(path), **config_kwargs(options))
        sequence_classifier_class(config)
        if not is_adapter(path) and "ForSequenceClassification" in str(config.architectures):
            model = AutoModelForSequenceClassification.from_pretrained(path, **options)
        else:
            # Built in memory, not through a temporary save: under several processes only rank 0 writes files.
            lm = load_causal_lm(path, field=field, tensor_parallel=False, dtype=options["dtype"],  # copied into an
                                device=None, model_kwargs=model_kwargs)          # unsharded classifier, on the CPU
            lm.config.num_labels = num_labels
            model = sequence_classifier_class(lm.config)._from_config(lm.config, dtype=lm.dtype)
            model.base_model.load_state_dict(lm.base_model.state_dict())
    model.config.pad_token_id = tokenizer.pad_token_id
    return (model if target is None else model.to(target)), tokenizer


# Config keys a stage means to change when it saves: a reward model's head and labels, the float32 master weights,
# the pad id align sets for batching. Every other value the checkpoint shipped is saved as it shipped.
INTENDED_CONFIG_CHANGES = frozenset({"architectures", "dtype", "torch_dtype", "num_labels", "id2label", "label2id",
                                     "problem_type", "pad_token_id", "transformers_version", "_name_or_path",
                                     "vocab_size"})


def shipped_config(source) -> dict | None:
    """The ``config.json`` of the checkpoint a stage started from (an adapter's base), or None when there is none
    (a model built from a preset, a hub id not on disk)."""
    if not isinstance(source, (str, Path)):
        return None
    try:
        folder = Path(base_model_path(source))
    except AlignError:
        return None
    file = folder / "config.json"
    return json.loads(file.read_text()) if file.is_file() else None


def restore_shipped_config(model, source) -> list[str]:
    """Put back every scalar config value of ``source``'s checkpoint that training switched, e.g. TRL's SFTTrainer
    turns ``output_router_logits`` on for a MoE's auxiliary loss, and a model saved with it on fails in the next
    stage's ``generate``. Returns the keys restored (a training-time setting must not leak into a saved artifact)."""
    shipped = shipped_config(source)
    if shipped is None:
        return []
    config = model.config
    current = config.to_dict()
    restored = []
    for key, value in shipped.items():
        if (key in INTENDED_CONFIG_CHANGES or isinstance(value, (dict, list)) or key not in current
                or current[key] == value):
            continue
        setattr(config, key, value)
        restored.append(key)
    if restored:
        log.info("saving the model with the config values its checkpoint shipped (training had changed %s)",
                 ", ".join(f"{k}={current[k]!r}" for k in restored))
    return restored


# --------------------------------------------------------------------------- QLoRA (bitsandbytes)


def quantization_device() -> str:
    """Where a quantised model trains here: transformers puts bitsandbytes weights on CUDA (or XPU) if present,
    else on the CPU (align trains on the CPU without CUDA, so not on Apple MPS)."""
    if torch.cuda.is_available():
        return "cuda"
    return "xpu" if hasattr(torch, "xpu") and torch.xpu.is_available() else "cpu"


def quantization_config(kind, *, lora: bool, where: str):
    """``quantization: 4bit|8bit`` -> a BitsAndBytesConfig (None when off). Every reason QLoRA cannot run
    here (bad value, no LoRA, bitsandbytes missing or broken, an unsupported device) is an AlignError."""
    if kind in (None, False):
        return None
    if kind not in ("4bit", "8bit"):
        raise AlignError(f"{where}: expected 4bit or 8bit (bitsandbytes QLoRA), or no quantization; got {kind!r}.")
    lora_field = where.rsplit(".", 1)[0] + ".lora"
    if not lora:
        raise AlignError(f"{where}: a {kind} base is frozen, so it needs LoRA adapters to train, but {lora_field} "
                         f"is off; set {lora_field} (e.g. {{r: 16, lora_alpha: 32}}) or remove quantization.")
    try:
        import bitsandbytes
    except Exception as e:  # ImportError, or a library that fails to load its native code
        raise AlignError(f"{where}: {kind} needs bitsandbytes, which does not import here ({type(e).__name__}: {e}). "
                         f"QLoRA is an optional extra: pip install 'align[qlora]' (bitsandbytes), or remove {where} "
                         f"(LoRA alone works).") from None
    device = quantization_device()
    supported = getattr(bitsandbytes, "supported_torch_devices", {"cuda"})  # before 0.45: CUDA only
    if device not in supported:
        raise AlignError(f"{where}: {kind} trains on {device} here, which bitsandbytes "
                         f"{getattr(bitsandbytes, '__version__', '?')} does not support (it supports "
                         f"{', '.join(sorted(supported))}); remove quantization (LoRA alone works) or run on a "
                         f"CUDA GPU.")
    from transformers import BitsAndBytesConfig

    if kind == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=training_dtype())


def is_quantized(model) -> bool:
    """Loaded with bitsandbytes 4-bit or 8-bit weights (also seen through a peft wrapper)."""
    return bool(getattr(model, "is_loaded_in_4bit", False) or getattr(model, "is_loaded_in_8bit", False))


def load_for_training(path, *, quantization=None, classifier: bool = False, field: str = "model", dtype=None,
                      model_kwargs: dict | None = None):
    """(model, tokenizer) to train: a causal LM, or with ``classifier`` a scalar-head classifier
    (``load_sequence_classifier``), in float32 master weights unless ``dtype`` says otherwise; with a
    BitsAndBytesConfig its linear layers are quantised (QLoRA) after any adapter was merged in full precision."""
    from peft import prepare_model_for_kbit_training

    path = resolve_model_path(path, field=field)
    if classifier:
        model = load_sequence_classifier(path, field=field, dtype=dtype, model_kwargs=model_kwargs)[0]
    else:  # a plain model is quantised while loading; an adapter is merged into its base first
        direct = quantization is not None and not is_adapter(path)
        model = load_causal_lm(path, field=field, training=True, dtype=dtype, model_kwargs=model_kwargs,
                               **({"quantization_config": quantization} if direct else {}))
    if quantization is not None and not is_quantized(model):
        name = model.name_or_path  # what a peft adapter records as its base, as without quantization
        model = type(model).from_pretrained(None, config=model.config, state_dict=model.state_dict(),
                                            dtype=model.dtype, quantization_config=quantization)
        model.name_or_path = model.config._name_or_path = name
    if quantization is not None:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
        keep_4bit_trainable(model)
    return model, load_tokenizer(path, field=field, model_kwargs=model_kwargs)


def keep_4bit_trainable(model) -> None:
    """bitsandbytes 0.50 on a CPU with AVX512-BF16 repacks a 4-bit weight for inference at its first no-grad eval
    forward (generation, evaluation); backward through the layer is then wrong, so every LoRA below it gets zero or
    far too small gradients for the rest of training (PPO moved ~80x less). Keep the training layout."""
    for module in model.modules():
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False


def merge_lora(model, load_base):
    """A peft ``model`` merged into a plain model. Merging into a 4/8-bit base would round base + update back to
    4/8 bits (losing small updates) and save a quantised model, so the adapter goes onto ``load_base()`` in float."""
    if not is_quantized(model):
        return model.merge_and_unload()
    import copy

    from peft import get_peft_model, get_peft_model_state_dict, set_peft_model_state_dict

    config = copy.deepcopy(model.peft_config[model.active_adapter])
    merged = get_peft_model(load_base(), config)
    set_peft_model_state_dict(merged, get_peft_model_state_dict(model))
    return merged.merge_and_unload()


def fp32_adapters_without_autocast(model, args) -> None:
    """TRL casts QLoRA's trainable weights to bf16. Without bf16/fp16 autocast (e.g. on a CPU) a bf16 score head
    fails on fp32 inputs and small AdamW updates round away in bf16, so they go back to fp32 there."""
    if is_quantized(model) and not (args.bf16 or args.fp16):
        for param in model.parameters():
            if param.requires_grad:
                param.data = param.data.float()
