"""Tensor parallelism for real on CPU: two gloo ranks under torchrun shard a micro Llama (4 heads, 2 KV heads)
through ``load_causal_lm`` and reproduce the logits and greedy generations of one process."""

import importlib.util
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from align.errors import AlignError
from align.eval.generation import generate
from align.launch import TP_SIZE_VARIABLE, tensor_parallel_size
from align.models import load_causal_lm, load_tokenizer
from align.testing import cpu_ranks_env

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent


def load_worker():
    """tp_worker.py as a module (not on sys.path): its fixed batch and prompts serve the reference too."""
    spec = importlib.util.spec_from_file_location("tp_worker", HERE / "tp_worker.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def peaked_model_dir(tmp_path_factory, tiny_tokenizer) -> Path:
    """llama-micro with larger random weights: at the default init (std 0.02) greedy decoding repeats a
    special token, which decodes to '' and would make comparing generations vacuous."""
    from align.models import build_model

    path = tmp_path_factory.mktemp("micro_llama_peaked")
    build_model({"preset": "llama-micro", "initializer_range": 0.2}, tiny_tokenizer, seed=0).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_adapter_dir(tmp_path_factory, peaked_model_dir) -> Path:
    """A LoRA adapter with non-zero weights, so merging it changes the logits."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("micro_adapter")
    base = load_causal_lm(peaked_model_dir, tensor_parallel=False)
    get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
                   ).save_pretrained(path)
    load_tokenizer(peaked_model_dir).save_pretrained(path)
    return path


@pytest.fixture
def single_process(monkeypatch):
    for name in (TP_SIZE_VARIABLE, "WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)


@pytest.mark.skipif(not (BIN / "torchrun").exists(), reason="torchrun is not installed next to python")
def test_two_ranks_match_one_process(tmp_path, peaked_model_dir, tiny_adapter_dir, single_process):
    env = cpu_ranks_env(**{TP_SIZE_VARIABLE: "2"}, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run([str(BIN / "torchrun"), "--standalone", "--nproc_per_node", "2",
                           str(HERE / "tp_worker.py"), str(peaked_model_dir), str(tiny_adapter_dir), str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=180)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    worker = load_worker()
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in (0, 1)]
    assert ranks[0]["world_size"] == 2

    for key, path in (("model", peaked_model_dir), ("adapter", tiny_adapter_dir)):
        shards = ranks[0][key]["sharding"]
        # 4 heads x 16 = 64 query rows and 192 MLP columns: each rank holds half (1 of the 2 KV heads too).
        assert shards["q_proj"] == {"dtensor": True, "global": (64, 64), "local": (32, 64),
                                    "placements": "(Shard(dim=0),)"}, shards
        assert shards["down_proj"] == {"dtensor": True, "global": (64, 192), "local": (64, 96),
                                       "placements": "(Shard(dim=1),)"}, shards

        model, tokenizer = load_causal_lm(path), load_tokenizer(path)
        assert not hasattr(model.model.layers[0].self_attn.q_proj.weight, "placements")
        ids, mask = worker.fixed_batch()
        with torch.inference_mode():
            logits = model(input_ids=ids, attention_mask=mask).logits
        greedy = generate(model, tokenizer, worker.PROMPTS, greedy=True, max_new_tokens=12)
        for rank in ranks:
            torch.testing.assert_close(rank[key]["logits"], logits, atol=1e-4, rtol=0)
            assert rank[key]["greedy"] == greedy
        assert all(greedy) and len(set(greedy)) == len(greedy), greedy  # a meaningful comparison
    assert not torch.allclose(ranks[0]["model"]["logits"], ranks[0]["adapter"]["logits"], atol=1e-3)


@pytest.mark.slow
def test_evaluate_stage_under_the_tensor_parallel_config_matches_one_process(tmp_path, micro_full_run):
    """`accelerate launch --config_file recipes/accelerate/tensor_parallel.yaml` re-runs the evaluate stage of a
    finished one-process run with every policy sharded over two ranks: the same samples and numbers."""
    import json
    import shutil

    if not (BIN / "accelerate").exists():
        pytest.skip("accelerate CLI not installed next to python")
    one, _ = micro_full_run
    run = tmp_path / "run"
    shutil.copytree(one, run)
    repo = HERE.parents[1]
    env = {k: v for k, v in cpu_ranks_env(PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}").items()
           if k != TP_SIZE_VARIABLE}
    with socket.socket() as free:  # not the default 29500, which another launch on this machine may hold
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    proc = subprocess.run([str(BIN / "accelerate"), "launch", "--config_file",
                           str(repo / "recipes" / "accelerate" / "tensor_parallel.yaml"), "--main_process_port", str(port),
                           "-m", "align", "run", str(repo / "tests" / "recipes" / "micro_full.yaml"),
                           "--output-dir", str(run), "--only", "eval", "--force"],
                          capture_output=True, text=True, env=env, timeout=300, cwd=repo)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-4000:]
    assert "processes: 2" in output and "tensor parallel: 2" in output
    expected = json.loads((one / "eval" / "metrics.json").read_text())["policies"]
    got = json.loads((run / "eval" / "metrics.json").read_text())["policies"]
    for name in expected:
        assert got[name]["scores"] == pytest.approx(expected[name]["scores"], abs=1e-4), name
        assert got[name]["kl"] == pytest.approx(expected[name]["kl"], abs=1e-4), name
        assert got[name]["perplexity"] == pytest.approx(expected[name]["perplexity"], rel=1e-5), name
    responses = lambda path: [json.loads(line)["response"] for line in path.read_text().splitlines()]  # noqa: E731
    assert responses(run / "eval" / "samples.jsonl") == responses(one / "eval" / "samples.jsonl")


def test_training_under_tensor_parallelism_without_gpus_is_a_clear_error(tmp_path, monkeypatch, single_process):
    from align.recipe import load_recipe
    from align.runner import run_recipe

    recipe = load_recipe(HERE.parents[1] / "tests" / "recipes" / "micro.yaml", output_dir=str(tmp_path))
    monkeypatch.setenv(TP_SIZE_VARIABLE, "2")
    with pytest.raises(AlignError, match="stages.pretrain: training under tensor parallelism needs GPUs"):
        run_recipe(recipe, echo=lambda *_: None)
    assert (tmp_path / "tokenizer" / ".align_complete.json").exists()  # finished stages stay


def test_launch_signal_chooses_tensor_parallel(monkeypatch, tiny_model_dir, single_process):
    import align.models

    calls = []
    monkeypatch.setattr(align.models, "load_tensor_parallel", lambda path, **kw: calls.append(path) or "sharded")
    assert tensor_parallel_size() == 1
    assert load_causal_lm(tiny_model_dir) != "sharded" and not calls

    monkeypatch.setenv(TP_SIZE_VARIABLE, "2")
    assert tensor_parallel_size() == 2
    assert load_causal_lm(tiny_model_dir) == "sharded" and len(calls) == 1
    assert load_causal_lm(tiny_model_dir, tensor_parallel=False) != "sharded" and len(calls) == 1

    monkeypatch.setenv(TP_SIZE_VARIABLE, "1")
    assert load_causal_lm(tiny_model_dir) != "sharded" and len(calls) == 1
    monkeypatch.setenv(TP_SIZE_VARIABLE, "two")
    with pytest.raises(AlignError, match="positive integer"):
        tensor_parallel_size()


@pytest.mark.parametrize("env, kwargs, message", [
    ({}, {}, "single process"),
    ({TP_SIZE_VARIABLE: "2", "WORLD_SIZE": "4"}, {}, r"size \(2\) must equal the number of processes \(4\)"),
    ({TP_SIZE_VARIABLE: "4", "WORLD_SIZE": "4"}, {}, r"num_key_value_heads \(2\) must be divisible by 4"),
    ({TP_SIZE_VARIABLE: "3", "WORLD_SIZE": "3"}, {}, r"num_attention_heads \(4\) and num_key_value_heads \(2\)"),
    ({"WORLD_SIZE": "2"}, {"quantization_config": object()}, "cannot be combined with quantization_config"),
])
def test_clear_errors(monkeypatch, single_process, tiny_model_dir, env, kwargs, message):
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(AlignError, match=message):
        load_causal_lm(tiny_model_dir, tensor_parallel=True, **kwargs)


def test_unmerged_adapter_cannot_be_sharded(monkeypatch, single_process, tiny_adapter_dir):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(AlignError, match="LoRA adapter.*merge=False"):
        load_causal_lm(tiny_adapter_dir, merge=False, tensor_parallel=True)
