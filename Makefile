# radtriage: `make run` starts the daemon, `make test` runs the whole suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
TORCH  := torch==2.14.1 torchvision==0.29.1
CONFIG ?= config.yaml
PYTEST_ARGS ?=

.PHONY: install install-test test-tools run test bench bench-pixels bench-training bench-load bench-model bench-e2e clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e .
	touch $@

install-test: $(VENV)/.installed-test

$(VENV)/.installed-test: $(VENV)/.installed setup.cfg
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@

# Debian tools the tests talk to: DCMTK (storescu, storescp, dcmdump, dcmcjpeg, dcmcjpls,
# dcmcrle), dicom3tools (dciodvfy), OpenJPH (ojph_compress: the HTJ2K test files) and Orthanc
# with its DICOMweb plugin (a real PACS for the integration tests), and Chromium (the
# dashboard's browser test, driven by the playwright package: it never downloads a browser).
# Installed only when missing; needs root (or sudo).
test-tools:
	@missing=""; \
	command -v storescu >/dev/null 2>&1 || missing="$$missing dcmtk"; \
	command -v dciodvfy >/dev/null 2>&1 || missing="$$missing dicom3tools"; \
	command -v ojph_compress >/dev/null 2>&1 || missing="$$missing openjph-tools"; \
	command -v Orthanc >/dev/null 2>&1 || missing="$$missing orthanc"; \
	ls /usr/share/orthanc/plugins/libOrthancDicomWeb.so >/dev/null 2>&1 || missing="$$missing orthanc-dicomweb"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi

run: install
	$(BIN)/radtriage serve --config $(CONFIG)

test: install-test test-tools
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: install-test test-tools
	$(BIN)/python benchmarks/receive.py

bench-pixels: install-test test-tools
	$(BIN)/python benchmarks/pixels.py

bench-training: install-test
	$(BIN)/python benchmarks/training.py

bench-load: install-test test-tools
	$(BIN)/python benchmarks/load.py

bench-model: install-test
	$(BIN)/python benchmarks/model.py

bench-e2e: install-test test-tools
	$(BIN)/python benchmarks/e2e.py

clean:
	rm -rf $(VENV) var build *.egg-info
