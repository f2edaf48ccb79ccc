# make test: set up the test bed (venv, ComfyUI, tiny models) and run the suite.
# make demo: the same setup, then run every workflow in workflows/ on a real ComfyUI server.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: test demo setup clean

test: setup
	$(PY) -m pytest tests $(PYTEST_ARGS)

demo: setup
	$(PY) scripts/demo.py

setup: $(VENV)/.torch-ok
	$(PY) scripts/setup_testbed.py

$(VENV)/.torch-ok:
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -q $(TORCH_PINS)
	touch $@

clean:
	rm -rf output .pytest_cache
