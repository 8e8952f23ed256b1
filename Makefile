GO     ?= go
PYTHON ?= /usr/bin/python3
BIN    := bin/bulsajo
# Packages whose code runs concurrently: tested with the race detector.
RACE_PKGS := ./internal/...

.PHONY: build demo test test-torch2 deps lint bench clean

build:
	$(GO) build -o $(BIN) ./cmd/bulsajo

deps:
	@PYTHON=$(PYTHON) scripts/deps.sh

# A real PyTorch DDP job (4 workers, gloo) with faults injected: a worker is
# SIGKILLed every 10 s and one is SIGSTOPped (a hang) at 25 s.
demo: deps build
	@rm -rf runs/demo
	$(BIN) run --nproc-per-node 4 --run-id demo --run-dir runs/demo \
	  --chaos kill-every=10s,stop-at=25s,seed=1 \
	  -- $(PYTHON) examples/ddp_train.py --steps 1500

lint:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

test: deps build lint
	$(GO) test -race -count=1 $(RACE_PKGS)
	BULSAJO_REQUIRE_NETNS=1 $(GO) test -count=1 -timeout 15m ./test/...
	PYTHONPATH=python $(PYTHON) -m unittest discover -s python/tests -t python
	$(MAKE) --no-print-directory test-torch2

# The suites that run real PyTorch, again on Debian 13's torch 2.6 (a chroot
# made once by scripts/torch2-env.sh, cached in /var/cache/bulsajo).
TORCH2_TESTS := ^(TestTorch[A-Z]|TestLive|TestMultiNodeTorch|TestMultiNodeLive)
test-torch2: build
	scripts/in-torch2.sh --host env BULSAJO_REQUIRE_NETNS=1 $(GO) test -count=1 -timeout 20m -run '$(TORCH2_TESTS)' ./test/e2e
	scripts/in-torch2.sh sh -c 'PYTHONPATH=python python3 -m unittest discover -s python/tests -t python'

bench: deps build
	python3 bench/faults.py --bulsajo-bin $(BIN) --live-steps 3000 --out bench/results.json --markdown bench/results.md

clean:
	rm -rf bin runs
