# oyster-executor — the two commands a newcomer needs are `make demo` and `make test`.
# Everything they need is installed here: Python packages into .venv, npm packages into node_modules.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP_PY  := $(VENV)/.setup-stamp
STAMP_NPM := node_modules/.setup-stamp

.PHONY: setup demo test test-unit test-integration lint typecheck contracts cgroups cgroups-remove \
	bench clean lock image image-test image-manifest

setup: $(STAMP_PY) $(STAMP_NPM)

$(STAMP_PY): pyproject.toml devnet/pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "python3 (3.11+) is required"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	$(PY) -m pip install --quiet --disable-pip-version-check --no-deps -e ./devnet
	@touch $@

$(STAMP_NPM): package.json package-lock.json
	@command -v npm >/dev/null || { echo "npm (Node 20+) is required"; exit 1; }
	npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# Runs the main job on an embedded default: local anvil, devnet contracts, the daemon, real jobs.
# (The same network code as `oyster-devnet up`, which keeps a local network running: docs/dapp.md.)
demo: setup
	$(PY) -m oyster_devnet.cli demo

# The whole suite: lint, types, then the tests (real anvil, workerd and cgroup slices), in
# parallel: TEST_WORKERS pytest-xdist workers, each with its own anvils, ports and slice numbers;
# a test file stays on one worker (its module fixtures are built once). TEST_WORKERS=0 runs them
# in one process.
TEST_WORKERS ?= 4
PYTEST_PARALLEL = -n $(TEST_WORKERS) --dist loadfile
# Tests marked `alone` (they load the machine themselves: a block of spinning jobs, the soak)
# run first, in one process with nothing else beside them; then the rest in parallel.
test: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy executor devnet/oyster_devnet benchmarks
	$(PY) -m pytest -m alone; alone=$$?; \
	$(PY) -m pytest -m "not alone" $(PYTEST_PARALLEL); rest=$$?; \
	test $$alone -eq 0 -a $$rest -eq 0

# The fast unit tests only: nothing that starts anvil or workerd (markers in pyproject.toml).
test-unit: setup
	$(PY) -m pytest -m "not chain and not workerd" $(PYTEST_PARALLEL)

# The chain and workerd integration tests only.
test-integration: setup
	$(PY) -m pytest -m "chain or workerd" $(PYTEST_PARALLEL)

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: setup
	$(VENV)/bin/mypy executor devnet/oyster_devnet benchmarks

# Recompiles contracts/devnet/*.sol with the pinned npm solc and refreshes executor/abi + artifacts.
contracts: setup
	node contracts/build.mjs

# Creates the cgroup v2 slices (root). See cgroup_setup.sh --help.
cgroups:
	./cgroup_setup.sh

cgroups-remove:
	./cgroup_setup.sh --remove

# Pins the product's runtime dependencies for the enclave image: a clean venv with only the product.
lock:
	rm -rf .lock-venv
	$(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install --quiet --disable-pip-version-check .
	{ sed -n '1,2p' requirements.lock; .lock-venv/bin/pip freeze --exclude oyster-executor; } \
		> requirements.lock.new
	mv requirements.lock.new requirements.lock
	rm -rf .lock-venv build

# The enclave image (needs a Docker engine), then `nitro-cli build-enclave` (docs/operator.md).
# IMAGE_BUILD_ARGS passes build arguments, e.g. "--build-arg BASE=... --build-arg BUILD_CA=ca.crt".
IMAGE ?= oyster-executor:enclave
image:
	docker build -f Dockerfile.nitro -t $(IMAGE) $(IMAGE_BUILD_ARGS) .

# "sha256  mode  path" of every file of $(IMAGE): two builds from one commit list the same lines.
image-manifest: setup
	$(PY) enclave/image_tool.py manifest $(IMAGE)

# Builds the image on a private Docker engine (started and stopped here; root, docker.io and
# debootstrap needed) from a locally made Debian base, boots it, registers it on a devnet and
# checks real jobs answered on chain; then rebuilds without cache and compares the file trees.
image-test: setup
	OYSTER_IMAGE_TEST=1 $(PY) -m pytest tests/test_enclave_image.py -s -q

# Sandbox latency, then the whole daemon on anvil (see BENCHMARKS.md; takes a few minutes).
# BENCH_E2E_ARGS="--rss-jobs 1000 --compare-cold --profile" gives the full figures.
BENCH_E2E_ARGS ?= --rss-jobs 200
bench: setup
	$(PY) -m benchmarks.run
	$(PY) -m benchmarks.e2e $(BENCH_E2E_ARGS)

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache
