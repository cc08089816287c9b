# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DATA := /usr/share/datasets/fashion-mnist
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo demo-clean test install data clean

# The shortcut audit FAILS on purpose (exit code 1 is expected): it finds the planted defects.
demo: install data
	$(BIN)/python -m sample_audits.train sample_audits/fashion_shortcut
	$(BIN)/auditor run sample_audits/fashion_shortcut/audit.yaml --report reports/fashion_shortcut || [ $$? -eq 1 ]

# The same rules on the model trained without the defects: no rule fails (the label and border
# rules warn on Fashion-MNIST's own ambiguous images; README).
demo-clean: install data
	$(BIN)/python -m sample_audits.train sample_audits/fashion_clean
	$(BIN)/auditor run sample_audits/fashion_clean/audit.yaml --report reports/fashion_clean

# Without the data package the tests on real data skip; CI (.ci/run) sets AUDITOR_REQUIRE_DATA=1
# so that a failed data install fails the run instead of leaving it green.
test: install
	@$(MAKE) --no-print-directory data || [ "$$AUDITOR_REQUIRE_DATA" != 1 ]
	$(BIN)/python -m pytest -q -m "not slow and not gpu"

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

data:
	@if [ ! -d $(DATA) ]; then \
	  echo "installing Debian's dataset-fashion-mnist"; \
	  $(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist; \
	fi

clean:
	rm -rf $(VENV) reports .auditor_cache
