"""Unset ``args:`` take align's micro-model defaults only for align's own models; a real checkpoint (a hub id, a
local folder align did not pretrain) gets the library config's own defaults, and the log and validate say which."""

from __future__ import annotations

import logging

import pytest

from align.recipe import build_recipe
from align.stages import stage_kind
from align.stages.context import StageContext
from align.stages.training import ALIGN_MODEL_MARKER, library_defaults, marked_align_model

CHAT = {"builtin": "reviews", "split": "sft", "size": 8}


def recipe(tmp_path, sft: dict, **stages):
    return build_recipe({"name": "defaults", "output_dir": str(tmp_path / "run"), "datasets": {"chat": CHAT},
                         "stages": {**stages, "sft": {"kind": "sft", "dataset": "chat", **sft}}})


def sft_config(tmp_path, sft: dict, **stages):
    from accelerate import PartialState

    r = recipe(tmp_path, sft, **stages)
    ctx = StageContext(r, r.stages["sft"], PartialState())
    module = stage_kind("sft").module
    return ctx.config(module.config_class(), module.ARG_DEFAULTS)


def test_a_real_checkpoint_gets_trls_defaults_unless_the_recipe_sets_them(tmp_path, hub_replica, caplog):
    from trl import SFTConfig

    path = str(hub_replica("llama3"))
    with caplog.at_level(logging.INFO, logger="align"):
        args = sft_config(tmp_path, {"model": path})
    trl = library_defaults(SFTConfig)
    assert args.learning_rate == trl["learning_rate"] == 2e-5
    assert args.max_length == trl["max_length"] and args.num_train_epochs == trl["num_train_epochs"]
    assert args.gradient_checkpointing is True  # TRL's, no longer forced off
    assert "a real checkpoint" in caplog.text and "SFTConfig's own defaults" in caplog.text
    set_here = sft_config(tmp_path, {"model": path, "args": {"learning_rate": 3e-4, "gradient_checkpointing": False}})
    assert set_here.learning_rate == 3e-4 and set_here.gradient_checkpointing is False


def test_a_hub_id_is_a_real_checkpoint(tmp_path):
    args = sft_config(tmp_path, {"model": "HuggingFaceTB/SmolLM2-135M-Instruct"})
    assert args.learning_rate == 2e-5


def test_align_pretrained_models_get_align_defaults_by_reference_and_by_marker(tmp_path, tiny_model_dir, hub_replica):
    pretrain = {"kind": "pretrain", "tokenizer": "x", "dataset": "chat", "model": {"preset": "llama-micro"}}
    by_ref = sft_config(tmp_path, {"model": "${stages.pretrain}"}, pretrain=pretrain)
    assert by_ref.learning_rate == 1e-3 and by_ref.gradient_checkpointing is False and by_ref.max_length == 512
    assert sft_config(tmp_path, {"model": str(tiny_model_dir)}).learning_rate == 1e-3  # a folder with the marker
    # continuing pretraining from a real checkpoint: what is trained from it is a real model too
    continued = {**pretrain, "model": str(hub_replica("llama3"))}
    assert sft_config(tmp_path, {"model": "${stages.pretrain}"}, pretrain=continued).learning_rate == 2e-5


def test_the_marker_follows_an_adapter_to_its_base(tmp_path, tiny_model_dir):
    import json

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": str(tiny_model_dir)}))
    assert marked_align_model(adapter) is not None
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "config.json").write_text("{}")
    assert marked_align_model(tmp_path / "plain") is None


def test_validate_lists_the_defaults_it_filled_and_their_source(tmp_path, hub_replica):
    from align.validate import check_recipe

    r = recipe(tmp_path, {"model": str(hub_replica("llama3")), "args": {"max_steps": 1}})
    notes = [n for n in check_recipe(r).checked if n.startswith("stages.sft.args")]
    assert len(notes) == 1
    assert "SFTConfig's own defaults" in notes[0] and "learning_rate=2e-05" in notes[0]
    assert "activation_checkpointing=True" in notes[0] and "max_steps" not in notes[0]


@pytest.mark.slow
def test_a_finished_run_marks_its_models_as_aligns_own(micro_full_run):
    out, _ = micro_full_run
    for stage in ("pretrain", "sft", "dpo", "ppo"):
        assert (out / stage / ALIGN_MODEL_MARKER).is_file(), stage
    assert (out / "sft" / "merged" / ALIGN_MODEL_MARKER).is_file()
    assert (out / "tokenizer" / ALIGN_MODEL_MARKER).exists() is False


def test_either_checkpointing_name_in_args_wins_over_align_default(tmp_path, tiny_model_dir):
    for name in ("gradient_checkpointing", "activation_checkpointing"):
        args = sft_config(tmp_path, {"model": str(tiny_model_dir), "args": {name: True}})
        assert args.activation_checkpointing is True and args.gradient_checkpointing is True, name
