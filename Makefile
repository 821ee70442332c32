# Two commands matter: `make demo` and `make test` (see README.md).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	# torch/torchvision first: on the dev machines these come from local disk.
	$(BIN)/pip install torch==2.14.1 torchvision==0.29.1
	# constraints.txt pins the whole tested stack (pip freeze of a working venv): a fast,
	# reproducible resolve. Regenerate it after changing dependencies.
	$(BIN)/pip install -c constraints.txt -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q tests

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/adir demo --output outputs/demo

clean:
	rm -rf $(VENV) outputs .pytest_cache
