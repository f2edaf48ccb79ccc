# make test: set up the test bed (venv, ComfyUI, tiny models) and run the suite.
# make demo: the same setup, then run every workflow in workflows/ on a real ComfyUI server, and guide the
#   learned world model (world/) next to the same seeds unguided; with ComfyUI 0.33's source in $(SHARED), the
#   world's Flux too (demo-flux).
# make world: retrain the learned world model and its heads (about an hour on 2 CPU cores).
# make world-flux: retrain the world's Flux and its depth head (ComfyUI 0.33 from $(SHARED)/comfyui loads it).
# make test-comfyui-033: the suite on ComfyUI 0.33.0 from $(SHARED)/comfyui (its own venv and folder).
# make test-frontend-new: the browser tests on ComfyUI 0.33.0 serving the newest frontend (FRONTEND_NEW).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
CONSTRAINTS := scripts/torch-constraints.txt
PIP_INSTALL = -m pip install --disable-pip-version-check -q -c $(CONSTRAINTS)
PYTEST_ARGS ?=

SHARED ?= ../shared
COMFYUI_033_TARBALL := $(SHARED)/comfyui/ComfyUI-0.33.0.tar.gz
COMFYUI_033 := .comfyui033/ComfyUI-0.33.0
VENV_033 := .venv-comfyui033
PY_033 := $(VENV_033)/bin/python
FRONTEND_NEW := 1.58.1
FRONTEND_NEW_DIR := .frontend-$(FRONTEND_NEW)
BROWSER_TESTS := tests/test_browser_editor.py tests/test_demo_page.py

.PHONY: test demo demo-flux setup world world-flux test-comfyui-033 setup-comfyui-033 test-frontend-new clean

test: setup
	$(PY) -m pytest tests $(PYTEST_ARGS)

demo: setup
	$(PY) scripts/demo.py
	$(PY) scripts/demo_world.py
	@if [ -f $(COMFYUI_033_TARBALL) ]; then $(MAKE) --no-print-directory demo-flux; else \
		echo "[demo] the world's Flux panel skipped: it needs ComfyUI 0.33 ($(COMFYUI_033_TARBALL) not found)"; fi

demo-flux: setup-comfyui-033
	COMFYUI_PATH=$(CURDIR)/$(COMFYUI_033) $(PY_033) scripts/demo_world.py 3 --family flux

setup: $(VENV)/.torch-ok
	$(PY) scripts/setup_testbed.py

world: setup
	$(PY) -m world.train
	$(PY) scripts/setup_testbed.py
	$(PY) -m world.heads
	$(PY) scripts/setup_testbed.py

world-flux: setup-comfyui-033
	COMFYUI_PATH=$(CURDIR)/$(COMFYUI_033) $(PY_033) -m world.flux
	COMFYUI_PATH=$(CURDIR)/$(COMFYUI_033) $(PY_033) scripts/setup_testbed.py
	COMFYUI_PATH=$(CURDIR)/$(COMFYUI_033) $(PY_033) -m world.heads --family flux --kinds depth
	COMFYUI_PATH=$(CURDIR)/$(COMFYUI_033) $(PY_033) scripts/setup_testbed.py

test-comfyui-033: setup-comfyui-033
	COMFYUI_PATH=$(CURDIR)/$(COMFYUI_033) $(PY_033) -m pytest tests $(PYTEST_ARGS)

setup-comfyui-033: $(VENV_033)/.torch-ok $(COMFYUI_033)/main.py
	COMFYUI_PATH=$(CURDIR)/$(COMFYUI_033) $(PY_033) scripts/setup_testbed.py

test-frontend-new: setup-comfyui-033 $(FRONTEND_NEW_DIR)/.ok
	COMFYUI_PATH=$(CURDIR)/$(COMFYUI_033) COMFYUI_FRONTEND_VERSION=$(FRONTEND_NEW) \
		COMFYUI_FRONTEND_ROOT=$(CURDIR)/$(FRONTEND_NEW_DIR)/comfyui_frontend_package/static \
		$(PY_033) -m pytest $(BROWSER_TESTS) $(PYTEST_ARGS)

$(FRONTEND_NEW_DIR)/.ok: $(VENV_033)/.torch-ok
	$(PY_033) $(PIP_INSTALL) --no-deps --target $(FRONTEND_NEW_DIR) comfyui-frontend-package==$(FRONTEND_NEW)
	touch $@

$(COMFYUI_033)/main.py:
	@test -f $(COMFYUI_033_TARBALL) || { echo "$(COMFYUI_033_TARBALL) is missing: ComfyUI 0.33.0's source is" \
		"only in the project's shared folder (SHARED=$(SHARED))" >&2; exit 2; }
	mkdir -p $(dir $(COMFYUI_033))
	tar -xzf $(COMFYUI_033_TARBALL) -C $(dir $(COMFYUI_033))
	touch $@

%/.torch-ok:
	$(PYTHON) -m venv $*
	$*/bin/python $(PIP_INSTALL) $(TORCH_PINS)
	touch $@

clean:
	rm -rf output .pytest_cache
