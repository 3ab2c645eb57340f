# The two set-up commands of the README.  Each does its whole set-up on a fresh
# Debian machine as root: Debian packages, a virtual environment, pip packages.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
APT_BASE := python3-venv python3-pip fuse3 gcc python3-dev  # gcc, python3-dev: PyPI's spidev builds from source
APT_BENCH := libfuse3-dev pkg-config gcc
# Real clients the bus tests drive: i2cdetect, i2cget, i2cset, i2cdump, i2ctransfer.
APT_TEST := i2c-tools

.PHONY: run test test-vm lint bench bench-cuse bench-fifo stress deps clean

deps: $(STAMP)

# setup.py builds the compiled request loop (pykld._loop) from src/pykld/_ext/: a changed
# source reinstalls, which rebuilds it in place.
$(STAMP): pyproject.toml setup.py $(wildcard src/pykld/_ext/*.c src/pykld/_ext/*.h)
	tools/apt-need $(APT_BASE)
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

run: $(STAMP)
	$(VENV)/bin/pykld run examples/hello.py --demo

# Cheapest and most telling first: lint; the fresh-machine checks (seconds, and
# they name a missing package); the in-process suite; real FUSE mounts, daemons
# and the kld commands; then the CUSE suite in a VM (minutes).
HOST_TESTS := tests/transport tests/test_cli.py

# The suites that serve real channels run once per request loop (PYKLD_LOOP); the
# in-process tests of the loop run both themselves (tests/fuse, request_loop).
LOOPS := compiled python

test: $(STAMP) lint
	tools/apt-need $(APT_TEST)
	$(PY) -m pytest -q tests/transport/test_fresh_machine.py
	$(PY) -m pytest -q tests --ignore=tests/cuse $(addprefix --ignore=,$(HOST_TESTS))
	set -e; for loop in $(LOOPS); do echo "make: the host transport tests, PYKLD_LOOP=$$loop"; \
		PYKLD_LOOP=$$loop $(PY) -m pytest -q $(HOST_TESTS) --deselect tests/transport/test_fresh_machine.py; done
	$(MAKE) --no-print-directory test-vm

# The CUSE suite, inside one boot of a stock Debian kernel (this host's kernel has
# no CUSE).  TMPDIR=/dev/shm: the guest's /tmp is the host's over 9p, where pytest's
# capture files break as soon as a test prints (a time limit's stack dump).  A VM that cannot boot skips it with a warning, unless PYKLD_REQUIRE_VM=1.
# One boot runs the suite once per request loop.
test-vm: $(STAMP)
	@PYKLD_REQUIRE_CUSE=1 tools/vm-run --timeout 2400 -- sh -c 'set -e; for loop in $(LOOPS); do \
		echo "make: the CUSE suite, PYKLD_LOOP=$$loop"; \
		PYKLD_LOOP=$$loop TMPDIR=/dev/shm $(CURDIR)/$(PY) -m pytest -q -p no:cacheprovider tests/cuse; done'; \
	rc=$$?; \
	if [ $$rc = 125 ] && [ "$${PYKLD_REQUIRE_VM:-0}" != 1 ]; then \
		echo "make: the CUSE VM did not boot here: CUSE tests NOT run (PYKLD_REQUIRE_VM=1 makes this a failure)"; \
		exit 0; \
	fi; \
	exit $$rc

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests examples bench
	$(VENV)/bin/mypy

bench: $(STAMP)
	tools/apt-need $(APT_BENCH)
	$(PY) bench/membuf_bench.py

bench-cuse: $(STAMP)
	tools/apt-need $(APT_BENCH)
	$(PY) bench/cuse_bench.py

# Many writers and readers on one fifo over FUSE, against a kernel pipe (~1 min).
bench-fifo: $(STAMP)
	$(PY) bench/fifo_bench.py

# The stress and fuzz suite (~13 min, as root): a table of figures, bench/out/stress.json.
stress: $(STAMP)
	$(PY) bench/stress.py

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache .mypy_cache .ruff_cache
