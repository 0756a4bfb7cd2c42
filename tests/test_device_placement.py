"""Every model align loads for inference lands on the device accelerate gives the process (a GPU on a GPU machine).

This machine has no GPU, so the accelerator is stood in for by the meta device: ``models.inference_device`` (which
asks accelerate's PartialState) is made to answer ``meta``, and each path's model must then sit on ``meta``. Before
this test, every one of these paths left its model on the CPU whatever accelerate said.
"""

from __future__ import annotations

import textwrap

import pytest
import torch

import align.models
from align.errors import AlignError

META = torch.device("meta")


class Loaded(Exception):
    """Raised by a stand-in for sampling once the stage has loaded its models (meta weights cannot sample)."""


@pytest.fixture
def accelerator(monkeypatch):
    """accelerate reports a device other than the CPU default."""
    monkeypatch.setattr(align.models, "inference_device", lambda: META)
    return META


def device_of(model) -> torch.device:
    return next(model.parameters()).device


@pytest.fixture(scope="module")
def adapter_dir(tiny_model_dir, tmp_path_factory):
    """A LoRA adapter on the micro Llama, as an SFT stage with ``lora:`` saves it."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    path = tmp_path_factory.mktemp("adapter")
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"]))
    model.save_pretrained(path)
    align.models.load_tokenizer(tiny_model_dir).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def reward_dir(tiny_model_dir, tmp_path_factory):
    from transformers import AutoModelForSequenceClassification

    path = tmp_path_factory.mktemp("reward_model")
    AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1).save_pretrained(path)
    align.models.load_tokenizer(tiny_model_dir).save_pretrained(path)
    return path


def test_the_device_is_accelerates():
    from accelerate import PartialState

    expected = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    assert align.models.inference_device() == PartialState().device == expected


def test_frozen_models_land_on_the_accelerator(accelerator, tiny_model_dir, adapter_dir, reward_dir):
    from align.models import load_causal_lm, load_sequence_classifier

    assert device_of(load_causal_lm(tiny_model_dir)) == META
    assert device_of(load_causal_lm(adapter_dir)) == META  # merged, then placed
    assert device_of(load_sequence_classifier(reward_dir, training=False)[0]) == META
    assert device_of(load_sequence_classifier(tiny_model_dir, training=False)[0]) == META  # built from an LM
    # a model to train stays where it loaded: its trainer places it; an explicit device_map is transformers' to follow
    assert device_of(load_causal_lm(tiny_model_dir, training=True)).type == "cpu"
    assert device_of(load_causal_lm(tiny_model_dir, device_map="cpu")).type == "cpu"
    assert device_of(load_causal_lm(tiny_model_dir, device=None)).type == "cpu"


def test_judges_land_on_the_accelerator(accelerator, tiny_model_dir, reward_dir):
    from align.eval.judge_factory import build_judge

    assert device_of(build_judge("rm", {"reward_model": str(reward_dir)}).model) == META
    assert device_of(build_judge("judge", {"llm": str(tiny_model_dir)}).model) == META
    # a judge larger than one device: transformers spreads it by the recipe's device_map instead
    assert device_of(build_judge("judge", {"llm": str(tiny_model_dir), "device_map": "cpu"}).model).type == "cpu"
    assert device_of(build_judge("rm", {"reward_model": str(reward_dir), "device_map": "cpu"}).model).type == "cpu"
    with pytest.raises(AlignError, match=r"judges\.judge\.device_map: expected str"):
        build_judge("judge", {"llm": str(tiny_model_dir), "device_map": 3})


def test_align_generate_samples_on_the_accelerator(accelerator, tiny_model_dir, monkeypatch):
    import align.eval.generation as generation

    seen = []
    monkeypatch.setattr(generation, "generate", lambda model, *a, **k: seen.append(device_of(model)) or ["x"])
    generation.generate_chat(str(tiny_model_dir), ["hello"])
    assert seen == [META]


def stage_context(tmp_path, tiny_model_dir, name):
    from accelerate import PartialState

    from align.recipe import load_recipe
    from align.stages.context import StageContext

    recipe_file = tmp_path / "recipe.yaml"
    recipe_file.write_text(textwrap.dedent(f"""\
        name: placement
        output_dir: {tmp_path / 'run'}
        datasets:
          prompts: {{builtin: reviews, split: prompts, size: 4}}
        judges:
          gold: {{function: "align.data.builtin:gold_judge"}}
        stages:
          preferences: {{kind: preferences, policy: {tiny_model_dir}, dataset: prompts, judge: gold,
                         samples_per_prompt: 2}}
          eval: {{kind: evaluate, policies: {{sft: {tiny_model_dir}, other: {tiny_model_dir}}}, reference: sft,
                  judges: [gold], prompts: prompts, length_anchors: false}}
        """))
    recipe = load_recipe(recipe_file)
    stage = recipe.stages[name]
    stage.out_dir.mkdir(parents=True)
    return StageContext(recipe, stage, PartialState())


def test_preferences_stage_samples_on_the_accelerator(accelerator, tiny_model_dir, tmp_path, monkeypatch):
    import align.eval.generation as generation
    from align.stages import preferences

    seen = []

    def sample(model, *args, **kwargs):
        seen.append(device_of(model))
        raise Loaded

    monkeypatch.setattr(generation, "generate", sample)
    with pytest.raises(Loaded):
        preferences.run(stage_context(tmp_path, tiny_model_dir, "preferences"))
    assert seen == [META]


def test_evaluate_stage_puts_policy_and_kl_reference_on_the_accelerator(accelerator, tiny_model_dir, tmp_path,
                                                                        monkeypatch):
    import align.eval.generation as generation
    import align.eval.kl as kl
    from align.stages import evaluate

    seen = {}

    def sample(model, tokenizer, prompts, **kwargs):
        seen["policy"] = device_of(model)
        return ["a response"] * len(prompts), [([1, 2], [3])] * len(prompts)

    def kl_from_ids(model, ref_model, *args, **kwargs):
        seen["kl"] = (device_of(model), device_of(ref_model))
        raise Loaded

    monkeypatch.setattr(generation, "generate", sample)
    monkeypatch.setattr(kl, "kl_from_ids", kl_from_ids)
    with pytest.raises(Loaded):
        evaluate.run(stage_context(tmp_path, tiny_model_dir, "eval"))
    assert seen == {"policy": META, "kl": (META, META)}


def test_frozen_models_run_in_bf16_on_a_gpu_that_has_it_and_fp32_on_a_cpu(monkeypatch):
    from align.models import resolve_dtype

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_dtype(None, device=torch.device("cuda", 0)) == torch.bfloat16
    assert resolve_dtype(None, device=torch.device("cpu")) == torch.float32  # e.g. a --cpu run on a GPU machine
    assert resolve_dtype(None, training=True, device=torch.device("cuda", 0)) == torch.float32  # master weights
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_dtype(None, device=torch.device("cuda", 0)) == torch.float32
