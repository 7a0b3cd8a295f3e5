# Two entry points do everything on a fresh machine:
#   make serve  - install kvferry into .venv and serve on a CPU pool
#   make test   - install what the tests need (Debian packages included), lint, type-check, run them
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
SERVE_ARGS ?=
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# pytest workers: the suite is mostly waiting on server processes, so two share two cores well.
PYTEST_WORKERS ?= 2
# mypy sees the kvferry.* names through links laid out as the package-dir mapping installs them.
TYPECHECK := build/typecheck

.PHONY: install test-deps serve test lint protos clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# A CPU pool needs no torch: the server and the status console only. The install is editable,
# so code changes need none: it reruns only when pyproject.toml (the dependencies) changed.
INSTALLED := $(VENV)/.kvferry-installed
install: $(INSTALLED)
$(INSTALLED): pyproject.toml | $(PY)
	$(PIP) install -q -e '.[server,console]'
	touch $@

# Debian's prometheus package brings prometheus and promtool for the metrics tests; libibverbs1
# lets the Mooncake engine load; iproute2 makes the network namespaces of the two-host tests;
# spin model-checks the resume protocol (verify/), compiling its verifier with gcc.
# The tests run prometheus themselves: on a systemd machine its service is masked first, so the
# package neither enables nor starts a Prometheus daemon there.
# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
test-deps: $(PY)
	{ command -v promtool && command -v ip && command -v spin && command -v gcc && \
		ldconfig -p | grep -q libibverbs.so.1; } >/dev/null || \
		{ if [ -d /run/systemd/system ]; then $(SUDO) systemctl mask prometheus.service; fi; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
		--no-install-recommends prometheus libibverbs1 iproute2 spin gcc libc6-dev; }
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test]'

serve: install
	$(VENV)/bin/kvferry serve $(SERVE_ARGS)

lint: test-deps
	$(VENV)/bin/ruff check .
	mkdir -p $(TYPECHECK)/kvferry
	for p in statemachine server client testing; do ln -sfn ../../../$$p $(TYPECHECK)/kvferry/$$p; done
	ln -sfn ../../../protos/kvferry/v1 $(TYPECHECK)/kvferry/v1
	MYPYPATH=$(TYPECHECK) $(VENV)/bin/mypy -p kvferry -p bench -p verify

test: test-deps lint
	$(PY) -m pytest -n $(PYTEST_WORKERS)

protos: test-deps
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=protos --pyi_out=protos \
		--grpc_python_out=protos protos/kvferry/v1/transfer.proto

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
