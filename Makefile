GO     ?= go
PYTHON ?= /usr/bin/python3
BIN    := bin/bulsajo
# Packages whose code runs concurrently: tested with the race detector.
RACE_PKGS := ./internal/...

.PHONY: build build-nvml demo demo-check demo-slow-check test test-torch2 stress deps deps-test lint bench clean

build:
	$(GO) build -o $(BIN) ./cmd/bulsajo

# For GPU nodes: GPU health through NVML (cgo; dlopens libnvidia-ml at run
# time, so it builds without a driver). bench/gpu/health_check.sh checks it.
build-nvml:
	CGO_ENABLED=1 CGO_CFLAGS="-O2 -g -Wno-deprecated-declarations" $(GO) build -tags nvml -o $(BIN) ./cmd/bulsajo

deps:
	@PYTHON=$(PYTHON) scripts/deps.sh

deps-test:
	@PYTHON=$(PYTHON) scripts/deps.sh --test

# A real PyTorch DDP job (4 workers, gloo) with faults injected at points of
# training, not of the clock, so a slow machine meets the same four: workers
# SIGKILLed at steps 300, 700 and 1100, one SIGSTOPped (a hang) at step 900.
# 10 restarts for 4 faults. 58 s on 2 idle cores (2-core AMD EPYC, 982c169);
# 201 s with the whole demo held to half of one core (cgroup cpu quota), same faults.
DEMO_CHAOS := kill-at-step=300,kill-at-step=700,stop-at-step=900,kill-at-step=1100,seed=1
demo: deps build
	@rm -rf runs/demo
	$(BIN) run --nproc-per-node 4 --run-id demo --run-dir runs/demo --max-restarts 10 \
	  --chaos $(DEMO_CHAOS) \
	  -- $(PYTHON) examples/ddp_train.py --steps 1500

# The demo as a test (`make test` runs it): exit 0 and the ✓ done summary,
# after exactly the four injected faults.
DEMO_RUN := demo-check
demo-check: deps build
	@rm -rf runs/$(DEMO_RUN); mkdir -p runs
	@$(BIN) run --nproc-per-node 4 --run-id $(DEMO_RUN) --run-dir runs/$(DEMO_RUN) --max-restarts 10 \
	  --chaos $(DEMO_CHAOS) \
	  -- $(PYTHON) examples/ddp_train.py --steps 1500 > runs/$(DEMO_RUN).out 2>&1 \
	  || { tail -40 runs/$(DEMO_RUN).out; echo "$(DEMO_RUN): bulsajo exited non-zero"; exit 1; }
	@grep -q '✓ done' runs/$(DEMO_RUN).out && test "$$(grep -c '⚡ chaos' runs/$(DEMO_RUN).out)" = 4 \
	  || { tail -40 runs/$(DEMO_RUN).out; echo "$(DEMO_RUN): want ✓ done after the 4 injected faults"; exit 1; }
	@grep '✓ done' runs/$(DEMO_RUN).out

# The same on a slow machine: bulsajo and its 4 workers held together to half of
# one core (a cgroup; about 3.5 min, 4x the idle 2-core run). The faults come at
# training steps, and hang detection scales with the measured step time, so the
# demo must end the same way.
demo-slow-check: deps build
	@scripts/cpu-limit.sh 50 $(MAKE) --no-print-directory demo-check DEMO_RUN=demo-slow-check

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	CGO_ENABLED=1 CGO_CFLAGS="-O2 -g -Wno-deprecated-declarations" $(GO) vet -tags nvml ./internal/gpu

test: deps-test build lint
	$(GO) test -race -count=1 $(RACE_PKGS)
	BULSAJO_REQUIRE_NETNS=1 $(GO) test -count=1 -timeout 30m $$($(GO) list ./test/... | grep -v /test/slurm)
	# A real slurmctld + slurmd per node on this machine (root; deps installs Slurm): alone,
	# since its scenarios wait on Slurm's own timers.
	$(GO) test -count=1 -timeout 15m ./test/slurm
	PYTHONPATH=python $(PYTHON) -m unittest discover -s python/tests -t python
	$(MAKE) --no-print-directory test-torch2
	$(MAKE) --no-print-directory demo-check
	$(MAKE) --no-print-directory demo-slow-check

# The suites that run real PyTorch, again on Debian 13's torch 2.6 (a chroot
# made once by scripts/torch2-env.sh, cached in /var/cache/bulsajo).
TORCH2_TESTS := ^(TestTorch[A-Z]|TestLive|TestMultiNodeTorch|TestMultiNodeLive)
test-torch2: build
	scripts/in-torch2.sh --host env BULSAJO_REQUIRE_NETNS=1 $(GO) test -count=1 -timeout 20m -run '$(TORCH2_TESTS)' ./test/e2e
	scripts/in-torch2.sh sh -c 'PYTHONPATH=python python3 -m unittest discover -s python/tests -t python'

# Flakiness hunt: every Go package's tests 20 times under the race detector,
# then the end-to-end suites 3 times. A failure here is a bug to fix, not to retry.
stress: deps-test build lint
	$(GO) test -race -count=20 -timeout 90m $(RACE_PKGS)
	for i in 1 2 3; do \
	  BULSAJO_REQUIRE_NETNS=1 $(GO) test -count=1 -timeout 30m ./test/... || exit 1; \
	done

bench: deps build
	python3 bench/faults.py --bulsajo-bin $(BIN) --live-steps 3000 --out bench/results.json --markdown bench/results.md

clean:
	rm -rf bin runs
