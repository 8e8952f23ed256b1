GO     ?= go
PYTHON ?= /usr/bin/python3
BIN    := bin/bulsajo
# Packages whose code runs concurrently: tested with the race detector.
RACE_PKGS := ./internal/...

.PHONY: build demo test deps lint bench clean

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
	BULSAJO_REQUIRE_NETNS=1 $(GO) test -count=1 -timeout 15m $$($(GO) list ./test/... | grep -v /test/slurm)
	# A real slurmctld + slurmd per node on this machine (root; deps installs Slurm): alone,
	# since its scenarios wait on Slurm's own timers.
	$(GO) test -count=1 -timeout 15m ./test/slurm
	PYTHONPATH=python $(PYTHON) -m unittest discover -s python/tests -t python

bench: deps build
	python3 bench/faults.py --bulsajo-bin $(BIN) --live-steps 3000 --out bench/results.json --markdown bench/results.md

clean:
	rm -rf bin runs
