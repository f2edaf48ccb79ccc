# make test-unit: the unit tier (tests/unit): pure pieces of readout/ and the workflow serializer, no ComfyUI, in
#   seconds once the venv exists. Run it after every change to readout/.
# make test: what CI runs. The unit tier; then, with ComfyUI 0.33's source in $(SHARED), the whole suite on 0.33.0
#   serving the newest frontend, on ComfyUI 0.3.75 the tests marked every_comfyui or every_frontend (what depends on
#   the version or the frontend), and the every_frontend browser tests on 0.33.0's own frontend, two test processes
#   at a time (scripts/test_legs); without it, the whole suite on 0.3.75. Each phase prints its seconds.
# make demo: the same setup, then run every workflow in example_workflows/ on a real ComfyUI server (0.33.0 when its
#   source is in $(SHARED); on 0.3.75 the 2026 families' examples are skipped), and guide the learned world model
#   (world/) next to the same seeds unguided; with ComfyUI 0.33's source, the world's Flux, Z-Image and
#   Qwen-Image-Edit too (demo-worlds-033).
# make world: retrain the learned world model and its heads (about an hour on 2 CPU cores).
# make world-flux: retrain the world's Flux and its depth head (ComfyUI 0.33 from $(SHARED)/comfyui loads it).
# make world-zimage: retrain the world's Z-Image and its four heads (on the ComfyUI 0.33 test bed).
# make world-qwen-image: retrain the world's Qwen-Image-Edit and its two drag heads (on the ComfyUI 0.33 test bed).
# make test-comfyui-033: the whole suite on ComfyUI 0.33.0 from $(SHARED)/comfyui, newest frontend (FRONTEND_NEW).
# make test-comfyui-0375: the every_comfyui and every_frontend tests on ComfyUI 0.3.75 (its own frontend).
# make test-frontend-033: the every_frontend browser tests on ComfyUI 0.33.0's own frontend.
#   PYTEST_ARGS adds pytest arguments to any of them; SELECT a -k expression to the last two; WORKERS=N runs
#   test-comfyui-033 in N pytest-xdist processes.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
CONSTRAINTS := scripts/torch-constraints.txt
PIP_INSTALL = -m pip install --disable-pip-version-check -q -c $(CONSTRAINTS)
PYTEST_ARGS ?=
SELECT ?=
WORKERS ?=
COMFY_CLI := comfy-cli==1.23.0
# the registry's packer, which the unit tier's package test runs (tests/unit/test_registry_package.py)

SHARED ?= ../shared
COMFYUI_033_TARBALL := $(SHARED)/comfyui/ComfyUI-0.33.0.tar.gz
COMFYUI_033 := .comfyui033/ComfyUI-0.33.0
VENV_033 := .venv-comfyui033
PY_033 := $(VENV_033)/bin/python
FRONTEND_NEW := 1.58.1
FRONTEND_NEW_DIR := .frontend-$(FRONTEND_NEW)
SUITE ?= tests --ignore=tests/unit
TIMED := scripts/timed
CHOSEN = $(if $(SELECT),-k "$(SELECT)")
SPREAD = $(if $(WORKERS),-n $(WORKERS) --dist loadscope --max-worker-restart=0)
# WORKERS=N: pytest-xdist processes, one module (the server's modules: one unit) at a time each (tests/conftest.py)
ON_0375 = every_frontend or every_comfyui and (not sdxl_family or each_family_on_every_comfyui)
# what ComfyUI 0.3.75 runs: browser tests for its frontend, version-dependent tests (SD1.5 runs; SDXL for detection)

.PHONY: test test-unit demo demo-examples-033 demo-worlds-033 setup world world-flux world-zimage world-qwen-image test-comfyui-033 test-comfyui-0375 setup-comfyui-033 \
	test-frontend-033 clean

test:
	@if [ -f $(COMFYUI_033_TARBALL) ]; then \
		scripts/unit_then_setups "$(FRONTEND_NEW_DIR)/.ok" && FRONTEND_NEW=$(FRONTEND_NEW) scripts/test_legs; \
	else \
		echo "[test] ComfyUI 0.33.0 not found ($(COMFYUI_033_TARBALL)): the whole suite runs on 0.3.75"; \
		$(TIMED) "unit tier" $(MAKE) --no-print-directory test-unit && \
		$(TIMED) "setup, ComfyUI 0.3.75" $(MAKE) --no-print-directory setup && \
		$(TIMED) "suite, ComfyUI 0.3.75" $(PY) -m pytest $(SUITE) $(PYTEST_ARGS); \
	fi

test-unit: $(VENV)/.unit-ok
	$(PY) -m pytest tests/unit -q

$(VENV)/.unit-ok: $(VENV)/.torch-ok requirements.txt Makefile
	$(PY) $(PIP_INSTALL) -r requirements.txt pytest $(COMFY_CLI)
	touch $@

test-comfyui-0375: setup
	$(PY) -m pytest $(SUITE) -m "$(ON_0375)" $(CHOSEN) $(PYTEST_ARGS)

demo: setup
	@if [ -f $(COMFYUI_033_TARBALL) ]; then $(MAKE) --no-print-directory demo-examples-033; else \
		echo "[demo] ComfyUI 0.33.0 not found ($(COMFYUI_033_TARBALL)): the examples run on 0.3.75, those of the 2026 families skipped"; \
		$(PY) -m scripts.demo; fi
	$(PY) -m scripts.demo_world
	@if [ -f $(COMFYUI_033_TARBALL) ]; then $(MAKE) --no-print-directory demo-worlds-033; else \
		echo "[demo] the world's Flux and Z-Image panels skipped: they need ComfyUI 0.33 ($(COMFYUI_033_TARBALL) not found)"; fi

demo-examples-033: setup-comfyui-033
	COMFYUI_PATH=$(CURDIR)/$(COMFYUI_033) $(PY_033) -m scripts.demo

demo-worlds-033: setup-comfyui-033
	COMFYUI_PATH=$(CURDIR)/$(COMFYUI_033) $(PY_033) -m scripts.demo_world --family flux
	COMFYUI_PATH=$(CURDIR)/$(COMFYUI_033) $(PY_033) -m scripts.demo_world --family zimage
	COMFYUI_PATH=$(CURDIR)/$(COMFYUI_033) $(PY_033) -m scripts.demo_world --family qwen_image

setup: $(VENV)/.torch-ok
	$(PY) -m scripts.setup_testbed

world: setup
	$(PY) -m world.train
	$(PY) -m scripts.setup_testbed
	$(PY) -m world.heads
	$(PY) -m scripts.setup_testbed

world-flux: setup-comfyui-033
	COMFYUI_PATH=$(CURDIR)/$(COMFYUI_033) $(PY_033) -m world.flux
	COMFYUI_PATH=$(CURDIR)/$(COMFYUI_033) $(PY_033) -m scripts.setup_testbed
	COMFYUI_PATH=$(CURDIR)/$(COMFYUI_033) $(PY_033) -m world.heads --family flux --kinds depth
	COMFYUI_PATH=$(CURDIR)/$(COMFYUI_033) $(PY_033) -m scripts.setup_testbed

world-zimage: setup-comfyui-033
	COMFYUI_PATH=$(CURDIR)/$(COMFYUI_033) $(PY_033) -m world.zimage
	COMFYUI_PATH=$(CURDIR)/$(COMFYUI_033) $(PY_033) -m scripts.setup_testbed
	COMFYUI_PATH=$(CURDIR)/$(COMFYUI_033) $(PY_033) -m world.heads --family zimage --kinds depth edge correspondence appearance
	COMFYUI_PATH=$(CURDIR)/$(COMFYUI_033) $(PY_033) -m scripts.setup_testbed

world-qwen-image: setup-comfyui-033
	COMFYUI_PATH=$(CURDIR)/$(COMFYUI_033) $(PY_033) -m world.qwen_image
	COMFYUI_PATH=$(CURDIR)/$(COMFYUI_033) $(PY_033) -m scripts.setup_testbed
	COMFYUI_PATH=$(CURDIR)/$(COMFYUI_033) $(PY_033) -m world.heads --family qwen_image --kinds correspondence appearance
	COMFYUI_PATH=$(CURDIR)/$(COMFYUI_033) $(PY_033) -m scripts.setup_testbed

test-comfyui-033: setup-comfyui-033 $(FRONTEND_NEW_DIR)/.ok
	COMFYUI_PATH=$(CURDIR)/$(COMFYUI_033) COMFYUI_FRONTEND_VERSION=$(FRONTEND_NEW) \
		COMFYUI_FRONTEND_ROOT=$(CURDIR)/$(FRONTEND_NEW_DIR)/comfyui_frontend_package/static \
		$(PY_033) -m pytest $(SUITE) $(SPREAD) $(PYTEST_ARGS)

setup-comfyui-033: $(VENV_033)/.torch-ok $(COMFYUI_033)/main.py
	COMFYUI_PATH=$(CURDIR)/$(COMFYUI_033) $(PY_033) -m scripts.setup_testbed

test-frontend-033: setup-comfyui-033
	COMFYUI_PATH=$(CURDIR)/$(COMFYUI_033) $(PY_033) -m pytest $(SUITE) -m every_frontend $(CHOSEN) $(PYTEST_ARGS)

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
