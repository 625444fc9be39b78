# Two commands for a fresh machine: `make demo` and `make test`.
# Both create .venv when it is missing and install everything (Xvfb, and dicom3tools'
# dciodvfy for the DICOM SEG tests, too, when run as root).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.medsam-installed
# torch/torchvision are pinned here, in the same pip command as everything else;
# pyproject.toml keeps ranges, as a library's should.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1
APT_PKGS := xvfb xauth libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-cursor0 \
	libxcb-image0 libxcb-render-util0 libxcb-shape0 libxcb-randr0 libxcb-xkb1 \
	libxkbcommon-x11-0 libgl1 libegl1 libdbus-1-3 libfontconfig1 dicom3tools

.PHONY: demo test install sysdeps lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@$(MAKE) --no-print-directory sysdeps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_PINS) -e ".[napari,train,cluster,dev]"
	touch $(STAMP)

sysdeps:
	@if command -v Xvfb >/dev/null 2>&1 && command -v dciodvfy >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing Xvfb, Qt's X libraries and dicom3tools"; \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $(APT_PKGS); \
	else echo "warning: Xvfb or dciodvfy is missing; install: $(APT_PKGS)"; fi

demo: $(STAMP)
	$(PY) -m medsam.demo --out out --overwrite

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check medsam adapters napari_plugin tests benchmarks

bench: $(STAMP)
	$(PY) -m benchmarks.speed --json benchmarks/results/speed-$$(date +%Y%m%d)-$$(hostname).json

clean:
	rm -rf out .pytest_cache build *.egg-info
