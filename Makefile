# scanside: set-up, run, test, benchmark.
#   make run    the appliance on embedded defaults
#   make test   installs everything the tests need (system packages too), then runs them
#   make bench  every benchmark suite; results under benchmarks/results/ (BENCHMARKS.md)
#   make torture  the long fault suites: 200 kills, 3000 fuzzed files (tests/system)
#   make zoo MODALITY=CT  one shipped model rebuilt from nothing (models/zoo/build.sh)

PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed-$(shell sha1sum pyproject.toml | cut -c1-12)

# Debian packages the tests use: dcmtk and dicom3tools read our DICOM files back as
# independent implementations; mosquitto (with its clients) is the real broker of the
# MQTT tests, openssl makes their TLS certificates, shellcheck checks the install script,
# chromium (headless, driven by Playwright) is the browser of the status-page tests.
SYSTEM_PACKAGES := dcmtk dicom3tools mosquitto mosquitto-clients openssl shellcheck chromium

.PHONY: deps venv run demo test torture bench zoo lint clean

deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do \
	    dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	    echo "Installing system packages:$$missing"; \
	    SUDO=$$( [ "$$(id -u)" -eq 0 ] || echo sudo ); \
	    $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[train,dev]'
	rm -f $(VENV)/.installed-*
	touch $@

venv: $(STAMP)

run: venv
	$(VENV)/bin/scanside run

# The appliance, a simulated scanner sending two synthetic PET series, and the alerts as
# they arrive; all on this machine (embedded broker on 127.0.0.1:1883).
demo: venv
	@rm -rf var/demo; mkdir -p var/demo
	@$(VENV)/bin/scanside run --inbox var/demo/inbox --state-dir var/demo/state \
	    > var/demo/appliance.log 2>&1 & app=$$!; \
	trap 'kill $$app $$sub 2>/dev/null; wait $$app' EXIT; \
	sleep 8; \
	$(VENV)/bin/scanside subscribe & sub=$$!; \
	$(VENV)/bin/scanside simulate-scanner --inbox var/demo/inbox --modality PT --cases 2 \
	    --seed 7 --rate 20; \
	sleep 20; echo "appliance log: var/demo/appliance.log"

test: deps venv
	$(PY) -m pytest -q

# The CI-sized fault suites run in `make test`; this is their long version.
torture: deps venv
	SCANSIDE_TORTURE=1 $(PY) -m pytest -q --timeout 3600 tests/system

bench: venv
	$(PY) -m benchmarks all $(BENCH_ARGS)

# Synthetic data, training, calibration, export with parity, evaluation and card for one
# modality; hours on 2 CPU cores, the training steps faster on a GPU:
# make zoo MODALITY=CT EPOCHS=60 DEVICE=cuda
# (EPOCHS, DEVICE and the other settings models/zoo/build.sh lists reach it from here).
zoo: venv
	models/zoo/build.sh $(MODALITY)

lint: venv
	$(VENV)/bin/ruff check edge export models benchmarks tests

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
