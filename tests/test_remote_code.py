"""A model folder that ships its own code (auto_map, as many Hub repositories do): align never runs it unless told,
says how to allow it instead of waiting on transformers' terminal prompt, and runs it when allowed."""

import json
import shutil
import subprocess
import sys

import pytest

from align.cli import main

CONFIGURATION = '''from transformers import LlamaConfig


class CustomConfig(LlamaConfig):
    model_type = "align_custom_llama"
'''
MODELING = '''from transformers import LlamaForCausalLM

from .configuration_custom import CustomConfig


class CustomForCausalLM(LlamaForCausalLM):
    config_class = CustomConfig
'''


@pytest.fixture(scope="module")
def custom_code_model(tiny_model_dir, tmp_path_factory):
    """align's micro model, declared as a repository's own architecture: its config names code in the folder."""
    folder = tmp_path_factory.mktemp("custom_code") / "model"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "configuration_custom.py").write_text(CONFIGURATION)
    (folder / "modeling_custom.py").write_text(MODELING)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="align_custom_llama", architectures=["CustomForCausalLM"],
                  auto_map={"AutoConfig": "configuration_custom.CustomConfig",
                            "AutoModelForCausalLM": "modeling_custom.CustomForCausalLM"})
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def test_generate_refuses_the_code_at_once_and_says_how_to_allow_it(custom_code_model):
    proc = subprocess.run([sys.executable, "-m", "align", "generate", str(custom_code_model), "--prompt", "hi",
                           "--max-new-tokens", "4"], capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "ships its own model code" in proc.stderr and "--trust-remote-code" in proc.stderr
    assert "trust_remote_code: true" in proc.stderr


def test_generate_and_export_run_it_when_allowed(custom_code_model, tmp_path, capsys):
    assert main(["generate", str(custom_code_model), "--prompt", "hi", "--max-new-tokens", "4", "--greedy",
                 "--trust-remote-code"]) == 0
    assert "### response" in capsys.readouterr().out
    out = tmp_path / "export"
    assert main(["export", str(custom_code_model), str(out), "--trust-remote-code"]) == 0
    assert (out / "modeling_custom.py").is_file()  # the exported folder carries the code its config names
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(out, trust_remote_code=True)
    assert type(model).__name__ == "CustomForCausalLM"


def test_a_recipe_stage_allows_it_with_model_kwargs(custom_code_model):
    from align.errors import AlignError
    from align.models import load_causal_lm

    with pytest.raises(AlignError, match=r"stages\.sft\.model: .* ships its own model code"):
        load_causal_lm(custom_code_model, field="stages.sft.model")
    model = load_causal_lm(custom_code_model, field="stages.sft.model", model_kwargs={"trust_remote_code": True})
    assert type(model).__name__ == "CustomForCausalLM"
