# The two commands a fresh machine needs:
#   make serve   install the gateway and serve the committed default model on 127.0.0.1:8080
#   make test    install everything and run the whole test suite
#   make triton  serve model_repository with the real tritonserver of the nvidia-pytriton wheel (CPU)
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
HOST ?= 127.0.0.1
PORT ?= 8080
# make triton: the wheel's tritonserver in its own venv (it pins numpy<2; the Python-backend models
# run in it too, see docs/TRITON.md), on loopback, with the CPU config of the scorer.
TRITON_VENV ?= .venv-triton
TRITON_HOST ?= 127.0.0.1
TRITON_HTTP_PORT ?= 8000
TRITON_GRPC_PORT ?= 8001
TRITON_METRICS_PORT ?= 8002
TRITON_CONFIG ?= cpu
TRITON_REPOSITORY ?= model_repository
# tests/test_deploy_k8s.py checks the KServe InferenceService with the KServe SDK's models, in a venv
# of its own: the SDK's dependencies (pandas<3, uvloop, ...) would change the project's .venv.
KSERVE_VENV ?= .venv-kserve
KSERVE_PIN ?= kserve==0.21.0

.PHONY: system-deps serve test triton triton-install install-serve install-triton-client install-dev lint bench dataset train clean \
	mutation kserve-install deploy-check capacity

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.serve-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[serve]'
	touch $@

$(VENV)/.triton-client-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[serve,triton]'
	touch $@ $(VENV)/.serve-installed

$(VENV)/.dev-installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[serve,triton,train,bench,dev]'
	touch $@ $(VENV)/.serve-installed $(VENV)/.triton-client-installed

# tritonserver 2.51 + the Python backend (PyPI wheel), and what the Python-backend models import:
# ONNX Runtime, Pillow, and this project (no deps: its numpy>=2 pin does not apply to the stub's env).
$(TRITON_VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(TRITON_VENV)/bin/pip install --quiet 'nvidia-pytriton==0.7.0' 'onnxruntime>=1.20' 'pillow>=10.0'
	$(TRITON_VENV)/bin/pip install --quiet --no-deps -e .
	touch $@

install-serve: $(VENV)/.serve-installed
install-dev: $(VENV)/.dev-installed
install-triton-client: $(VENV)/.triton-client-installed
triton-install: $(TRITON_VENV)/.installed
kserve-install: $(KSERVE_VENV)/.installed

$(KSERVE_VENV)/.installed: Makefile
	$(PYTHON) -m venv $(KSERVE_VENV)
	$(KSERVE_VENV)/bin/pip install --quiet '$(KSERVE_PIN)'
	touch $@

serve: install-serve
	$(BIN)/uvicorn serving.app:app --host $(HOST) --port $(PORT)

# Debian packages the tests drive for real (a Prometheus server and promtool, headless Chromium and its
# driver). Installed with apt-get when missing and running as root (CI); otherwise the tests that need
# them say which package is missing.
APT_PACKAGES ?= prometheus chromium chromium-driver
system-deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ] && [ "$$(id -u)" = 0 ]; then \
		echo "apt-get install $$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	elif [ -n "$$missing" ]; then echo "system-deps: not root, missing: $$missing"; fi

test: install-dev triton-install kserve-install system-deps
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

# Ctrl-C stops it cleanly (tritonserver unloads the models, then exits).
triton: install-triton-client triton-install
	$(BIN)/python -m export.triton_server --model-repository $(TRITON_REPOSITORY) \
		--config-name '$(TRITON_CONFIG)' --host $(TRITON_HOST) --venv $(TRITON_VENV) \
		--http-port $(TRITON_HTTP_PORT) --grpc-port $(TRITON_GRPC_PORT) --metrics-port $(TRITON_METRICS_PORT)

lint: install-dev
	$(BIN)/ruff check .

# Mutation testing of the gate's attacks, NT, the metrics and the verdict (docs/MUTATION.md; not in CI):
# mutmut mutates a mutants/ copy ([tool.mutmut] in pyproject.toml), one test process, niced, then the
# kill rate per module against tests/mutation/equivalent_mutants.yaml (exit 1 below 90% or on an open
# survivor). MUTANTS='training.nt.* training.metrics.*' narrows the run to some mutant names.
MUTANTS ?=
mutation: install-dev
	nice -n 19 env OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 $(BIN)/mutmut run --max-children 1 $(MUTANTS)
	$(BIN)/python tests/mutation/kill_rate.py

bench: install-dev
	$(BIN)/python bench/nt_overhead.py

dataset: install-dev
	$(BIN)/python training/build_dataset.py --out data/full --size full

train: install-dev
	$(BIN)/python training/train.py --config training/configs/default.yaml

clean:
	rm -rf $(VENV) $(TRITON_VENV) $(KSERVE_VENV) .triton .pytest_cache .ruff_cache runs

# The deployment files offline (docs/DEPLOY.md): hadolint, the image build replayed in a fresh venv,
# compose wiring, kustomize + Kubernetes schemas + the KServe SDK, yamllint.
deploy-check: install-dev kserve-install system-deps
	$(BIN)/python -m pytest tests/test_deploy_image.py tests/test_deploy_compose.py tests/test_deploy_k8s.py

# Images per second of one gateway replica on this machine and the replicas for 1,000 images/s.
capacity: install-dev
	$(BIN)/python bench/capacity.py --json runs/capacity.json
