GO     ?= go
PYTHON ?= /usr/bin/python3
BIN    := bin/bulsajo
# Packages whose code runs concurrently: tested with the race detector.
RACE_PKGS := ./internal/...

.PHONY: build build-nvml demo demo-check test test-torch2 stress deps deps-test lint bench clean

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
# 10 restarts for 4 faults. About 90 s on 2 idle cores (86 s measured).
DEMO_CHAOS := kill-at-step=300,kill-at-step=700,stop-at-step=900,kill-at-step=1100,seed=1
demo: deps build
	@rm -rf runs/demo
	$(BIN) run --nproc-per-node 4 --run-id demo --run-dir runs/demo --max-restarts 10 \
	  --chaos $(DEMO_CHAOS) \
	  -- $(PYTHON) examples/ddp_train.py --steps 1500

# The demo as a test (`make test` runs it): exit 0 and the ✓ done summary,
# after exactly the four injected faults.
demo-check: deps build
	@rm -rf runs/demo-check; mkdir -p runs
	@$(BIN) run --nproc-per-node 4 --run-id demo-check --run-dir runs/demo-check --max-restarts 10 \
	  --chaos $(DEMO_CHAOS) \
	  -- $(PYTHON) examples/ddp_train.py --steps 1500 > runs/demo-check.out 2>&1 \
	  || { tail -40 runs/demo-check.out; echo "demo-check: bulsajo exited non-zero"; exit 1; }
	@grep -q '✓ done' runs/demo-check.out && test "$$(grep -c '⚡ chaos' runs/demo-check.out)" = 4 \
	  || { tail -40 runs/demo-check.out; echo "demo-check: want ✓ done after the 4 injected faults"; exit 1; }
	@grep '✓ done' runs/demo-check.out

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
