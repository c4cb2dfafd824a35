# The verbs of the project. `make run` and `make test` are the two that README.md promises.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed

.PHONY: help venv lock lock-upgrade lint typecheck contracts chart dashboard check unit integration e2e test run echo bench \
        compiled pure test-compiled \
        image e2e-assets base-image node-image cluster-up cluster-down kind-demo kind-demo-down \
        clean

help:
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/' | column -t -s $$'\t'

# The venv installs the lock (requirements/, pinned with hashes: the same versions as the image),
# then the project itself with --no-deps; a lock older than pyproject.toml stops it (make lock).
$(STAMP): pyproject.toml requirements/build.txt requirements/dev.txt
	python3 hack/lock.py check
	python3 -m venv $(VENV)
	$(PIP) install -q --require-hashes -r requirements/build.txt
	$(PIP) install -q --require-hashes -r requirements/dev.txt
	$(PIP) install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

venv: $(STAMP) ## create .venv with the project and its dev tools

lock: ## requirements/*.txt from pyproject.toml: new requirements added, other pins kept
	python3 hack/lock.py write

lock-upgrade: ## requirements/*.txt with the newest version of everything
	python3 hack/lock.py write --upgrade

PY_DIRS := $(wildcard lbwire dataplane controller monitoring tests bench)

lint: $(STAMP) ## ruff
	$(VENV)/bin/ruff check $(PY_DIRS)
	$(VENV)/bin/ruff format --check $(PY_DIRS)

typecheck: $(STAMP) ## mypy --strict
	$(VENV)/bin/mypy

contracts: $(STAMP) ## import-linter architecture contracts
	$(VENV)/bin/lint-imports

chart: $(STAMP) ## helm lint --strict, hadolint of the Dockerfiles; the committed dashboard is current
	bash hack/check-chart.sh
	$(PY) -m monitoring.dashboard --check

dashboard: $(STAMP) ## regenerate helm/wslb/files/dashboards/wslb.json from monitoring/dashboard.py
	$(PY) -m monitoring.dashboard

check: lint typecheck contracts chart ## all static checks

unit: $(STAMP) ## unit tier: pure code
	$(PY) -m pytest tests/unit -q

integration: $(STAMP) ## integration tier: loopback sockets
	$(PY) -m pytest tests/integration -q

e2e: $(STAMP) ## e2e tier on a kind cluster (builds what is missing); E2E_ARGS go to pytest
	bash hack/e2e.sh $(E2E_ARGS)

E2E_ON = [ -x hack/e2e.sh ] && [ "$${WSLB_SKIP_E2E:-}" != 1 ]

test: check ## every tier this machine can run (what CI runs), pure Python, then compiled
	@# The Go-built kube-apiserver/etcd/helm serve the integration tier's controller tests too.
	@if $(E2E_ON); then bash hack/e2e-assets.sh; fi
	WSLB_MYPYC=0 $(PY) -m pytest tests/unit tests/integration tests/monitoring -q -rs -p no:cacheprovider
	@if $(E2E_ON); then bash hack/e2e.sh; \
	  else echo "e2e tier skipped: WSLB_SKIP_E2E=1 was set"; fi
	$(MAKE) test-compiled

# The connection core and the HTTP request path (setup.py's COMPILED) compiled with mypyc, as the
# image ships it: C extensions beside the .py files, which Python imports first (setup.py).
# Opt-in, it needs a C compiler and Python's headers; `make pure` goes back to pure Python.
compiled: $(STAMP) ## compile the connection core with mypyc (.so beside the .py), as in the image
	rm -rf build dataplane/*.so
	WSLB_MYPYC=1 $(PIP) install -q --no-deps --no-build-isolation -e .

pure: ## remove the compiled connection core: pure Python again
	rm -rf build dataplane/*.so

# The last pass of `make test` (after the pure Python tiers): the unit tier and the integration
# tests that drive the core, against the compiled core (tests/unit/test_compiled.py fails on
# pure). The compiled modules are removed afterwards, pass or fail: the checkout is pure again.
COMPILED_TESTS := tests/unit tests/integration/test_proxy.py tests/integration/test_close_paths.py \
	tests/integration/test_timeouts.py tests/integration/test_limits.py \
	tests/integration/test_robustness.py tests/integration/test_connection_record.py \
	tests/integration/test_http_proxy.py tests/integration/test_http_rules.py \
	tests/integration/test_http_smuggling.py tests/integration/test_http_large.py \
	tests/integration/test_http_stall.py \
	tests/integration/test_http_body_timeout.py \
	tests/integration/test_handshake_errors.py tests/integration/test_metrics.py \
	tests/integration/test_handshake_deadlines.py tests/integration/test_conformance.py \
	tests/integration/test_tunnel_answer.py tests/integration/test_tunnel_lifecycle.py \
	tests/integration/test_balancing.py tests/integration/test_health.py \
	tests/integration/test_sticky_tokens.py tests/integration/test_tls_stream.py tests/integration/test_tls_memory.py \
	tests/integration/test_tls_failures.py tests/integration/test_sni.py
test-compiled: compiled ## the unit tier and the relay integration tests, core compiled with mypyc
	WSLB_MYPYC=1 $(PY) -m pytest $(COMPILED_TESTS) -q -rs -p no:cacheprovider; \
	  status=$$?; rm -rf build dataplane/*.so; exit $$status

run: $(STAMP) ## the load balancer standalone: WS :8080, WSS :8443, two demo echo backends
	$(PY) -m dataplane.demo examples/standalone.yaml

echo: $(STAMP) ## one demo echo backend on 127.0.0.1:9001
	$(VENV)/bin/wslb-echo --port 9001

bench: $(STAMP) ## benchmarks against HAProxy and nginx; writes BENCHMARKS.md
	bash bench/run.sh

image: ## our image (Dockerfile), tagged localhost/wslb:<chart appVersion> and :dev
	bash hack/image.sh

base-image: ## the debootstrap base and Python base images, with podman
	bash hack/base-image.sh

e2e-assets: ## build the pinned Go tools into ~/.cache/wslb (only what is missing)
	bash hack/e2e-assets.sh

node-image: ## the kind node image built from sources (where kindest/node cannot be pulled)
	bash hack/node-image.sh

cluster-up: ## a kind cluster for a person to use
	bash hack/cluster.sh up

cluster-down: ## delete that cluster
	bash hack/cluster.sh down

kind-demo: ## kind cluster + image + chart + an echo LoadBalancer; prints the ws:// and wss:// URLs
	bash hack/kind-demo.sh up

kind-demo-down: ## delete the kind-demo cluster
	bash hack/kind-demo.sh down

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
