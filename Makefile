# Two entry points do everything on a fresh machine:
#   make serve  - install kvferry into .venv and serve on a CPU pool
#   make test   - install what the tests need (Debian packages included) and run them
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
SERVE_ARGS ?=
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install test-deps serve test protos clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
install: $(PY)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e .

# Debian's prometheus package brings prometheus and promtool for the metrics tests.
test-deps: $(PY)
	command -v promtool >/dev/null || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends prometheus; }
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test]'

serve: install
	$(VENV)/bin/kvferry serve $(SERVE_ARGS)

test: test-deps
	$(PY) -m pytest

protos: test-deps
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=protos --pyi_out=protos \
		--grpc_python_out=protos protos/kvferry/v1/transfer.proto

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
