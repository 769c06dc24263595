# make demo / make test work as the very first command on a fresh Debian/Ubuntu machine: they install what is missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# System packages: what ffcv's build needs (it ships as an sdist only), tmux for the monitoring layout, and
# btrfs-progs for scripts/local_nvme.sh (the instance store as one striped filesystem).
APT_PACKAGES := libturbojpeg0-dev libopencv-dev pkg-config tmux btrfs-progs
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install system-deps sky-install test test-fast demo lint format clean

install: $(STAMP)

system-deps:
	@if pkg-config --exists libturbojpeg opencv4 2>/dev/null && command -v tmux >/dev/null && command -v mkfs.btrfs >/dev/null; then \
		echo "system packages: present"; \
	else \
		echo "installing system packages: $(APT_PACKAGES)"; \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $(APT_PACKAGES); \
	fi

$(STAMP): pyproject.toml
	@$(MAKE) --no-print-directory system-deps
	@[ -x $(BIN)/python ] || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@$(MAKE) --no-print-directory sky-install
	@touch $(STAMP)

# SkyPilot, the launcher (`sky jobs launch sky/p4d_78pct.yaml`), in its own venv: skypilot 0.14 pins click<8.2 and
# wandb needs click>=8.2, so one environment cannot hold both. The training machine never needs it.
SKY_VENV := .venv-sky
SKYPILOT := skypilot[aws]==0.14.1
sky-install:
	@[ -x $(SKY_VENV)/bin/python ] || $(PYTHON) -m venv $(SKY_VENV)
	$(SKY_VENV)/bin/pip install -q '$(SKYPILOT)'

# Two pytest workers (pytest-xdist), a test file each at a time: most tests wait on one Python process at a time
# (a CLI subprocess, a Trainer), so two of them keep both cores busy. `make test TEST_WORKERS=0` runs serially.
# Either may run before or after `make demo`: the tests never read or write the checkout (tests/conftest.py).
TEST_WORKERS ?= 2
PYTEST := $(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadfile

test: install
	$(PYTEST) --durations=15

# The in-process tests only (a few minutes): what to run while editing. `make test` adds the slow ones.
test-fast: install
	$(PYTEST) -m "not slow"

demo: install
	bash scripts/demo.sh

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:
	rm -rf demo_output .pytest_cache
