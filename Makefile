# carmesh: local mesh, tests and benchmarks. `make help` lists the targets.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
MODEL ?=
IMAGE ?=
export CARMESH_STACK_RUN_DIR ?= .run

.PHONY: help setup protos proto-release lint typecheck test up up-infra down status demo train bench bench-detect bench-ingest bench-accuracy bench-train bench-export-sizes clean fuzz bench-track street-detector

help: ## this list
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

setup: ## install system packages (Redis, PostgreSQL) and .venv with carmesh[dev]; idempotent
	@bash scripts/setup.sh

protos: ## regenerate carmesh/v1 from protos/ (committed; tests fail when stale)
	$(PY) -m grpc_tools.protoc -I protos --python_out=. --pyi_out=. --grpc_python_out=. protos/carmesh/v1/*.proto
	$(PY) -m grpc_tools.protoc -I protos --descriptor_set_out=carmesh/kserve/grpc_predict_v2.binpb protos/inference/grpc_predict_v2.proto
	$(VENV)/bin/buf lint

proto-release: ## freeze the current protos as protos/releases/vVERSION.binpb (VERSION=x.y.z; FORCE=1 rewrites)
	@echo "$(VERSION)" | grep -Eq '^[0-9]+\.[0-9]+\.[0-9]+$$' || { echo "usage: make proto-release VERSION=x.y.z" >&2; exit 2; }
	@test ! -e protos/releases/v$(VERSION).binpb -o "$(FORCE)" = 1 || { echo "protos/releases/v$(VERSION).binpb exists: a released API is frozen (FORCE=1 rewrites it)" >&2; exit 2; }
	$(VENV)/bin/buf build -o protos/releases/v$(VERSION).binpb

lint: ## ruff check, ruff format --check, buf lint
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/buf lint

typecheck: ## mypy over the daemons, kit and CLI
	$(VENV)/bin/mypy kit devstack bench detector registry_gateway gateway carmesh_cli ingestor feature_service trainer trainer_worker bento_detector tracking tracker

test: ## the whole suite: unit, integration (real Redis/PostgreSQL/Tansu/MLflow) and end-to-end
	$(PY) -m pytest -q -ra

FUZZ_EXAMPLES ?= 10000
FUZZ_SEED ?= 16
fuzz: ## FUZZ_EXAMPLES generated requests over every RPC through a fresh mesh; prints counts per RPC and status code
	FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) FUZZ_SEED=$(FUZZ_SEED) $(PY) -m pytest -q -s -p no:cacheprovider tests/fuzz

.PHONY: test-faults
FAULTS_LOAD_S ?= 30
test-faults: ## kill -9 of each daemon under load through the gateway, FAULTS_LOAD_S s around each kill (the trainer's: minutes)
	CARMESH_FAULTS_TRAINER=1 CARMESH_FAULTS_LOAD_S=$(FAULTS_LOAD_S) $(PY) -m pytest -q -rP -p no:cacheprovider tests/faults

up: ## start Redis, PostgreSQL, Tansu, MLflow and the daemons on 127.0.0.1 (logs/pids in .run/)
	@$(PY) -m devstack up

up-infra: ## start only Redis, PostgreSQL, Tansu and MLflow
	@$(PY) -m devstack up --infra

down: ## stop everything `make up` started
	@$(PY) -m devstack down

status: ## what runs
	@$(PY) -m devstack status || true

demo: ## start the mesh, import MODEL (an ONNX detector), detect cars in IMAGE through the gateway
	@bash scripts/demo.sh "$(MODEL)" "$(IMAGE)"

train: ## import DATA (default: apollo-cars, else synthetic), snapshot it, train through the gateway (ARGS=...)
	@bash scripts/train.sh

bench: bench-detect bench-ingest bench-accuracy bench-train ## every benchmark; each writes its section of docs/benchmarks.md

bench-detect: ## raw ONNX Runtime vs detector vs gateway; writes docs/benchmarks.md
	$(PY) -m bench.detect $(if $(MODEL),--model $(MODEL)) --write docs/benchmarks.md

bench-accuracy: ## car AP50 / AP50-95 of MODEL on apollo-cars val; writes docs/benchmarks.md
	$(PY) -m bench.accuracy $(if $(MODEL),--model $(MODEL)) --write docs/benchmarks.md

bench-ingest: ## end-to-end ingest vs raw aiokafka vs JPEG decode; writes docs/benchmarks.md
	$(PY) -m bench.ingest --write docs/benchmarks.md

PRECISIONS ?= float32,int8
bench-export-sizes: ## one trained model (KERAS=.../keras/body.keras from its MLflow run) at several export sizes and PRECISIONS: AP and speed
	$(PY) -m bench.export_sizes --keras $(KERAS) --precisions $(PRECISIONS)

bench-train: ## training steps/s: raw loop on in-memory tensors vs 1 and 2 workers; writes docs/benchmarks.md
	$(PY) -m bench.train --write docs/benchmarks.md

bench-track: ## tracker accuracy (MOTA, IDF1, counts) on the synthetic street video and frames/s vs raw ByteTrack; writes docs/tracking.md
	$(PY) -m bench.track --mesh --write docs/tracking.md

street-detector: ## train the synthetic street video's car/van detector (bench.street_detector, ~5 min) into models/street-detector/
	$(PY) -m bench.street_detector models/street-detector

clean: down ## stop and remove .run/
	rm -rf .run

.PHONY: helm-check helm-upgrade
helm-check: ## lint and render helm/carmesh with every helm/carmesh/ci values file, validate offline (manifests in .run/helm/)
	$(PY) -m pytest -q -p no:cacheprovider tests/deploy/test_helm.py

RELEASE ?= carmesh
NAMESPACE ?= carmesh
helm-upgrade: ## upgrade one daemon of an installed release to TAG, the others untouched (DAEMON=detector TAG=x.y.z; needs helm and a cluster)
	@test -n "$(DAEMON)" -a -n "$(TAG)" || { echo "usage: make helm-upgrade DAEMON=<values key, e.g. detector> TAG=x.y.z" >&2; exit 2; }
	helm upgrade $(RELEASE) helm/carmesh --namespace $(NAMESPACE) --reuse-values --set $(DAEMON).image.tag=$(TAG) --wait --atomic
.PHONY: bento bento-serve
BENTOML_HOME ?= .run/bentoml
bento: ## build the BentoML service (bento_detector/) into a Bento under BENTOML_HOME (.run/bentoml)
	BENTOML_HOME=$(BENTOML_HOME) $(VENV)/bin/bentoml build -f bento_detector/bentofile.yaml .

bento-serve: ## serve the BentoML detector on 127.0.0.1:3000 (model from the registry: CARMESH_BENTO_* settings)
	BENTOML_HOME=$(BENTOML_HOME) $(VENV)/bin/bentoml serve bento_detector.service:CarDetector --host 127.0.0.1 --port 3000

.PHONY: bench-serve
bench-serve: ## detector (ONNX Runtime, Triton backend) vs Triton direct vs BentoML, c=1 and 8; writes docs/benchmarks.md
	$(PY) -m bench.serve $(if $(MODEL),--model $(MODEL)) --write docs/benchmarks.md
.PHONY: images image-check push
IMAGES ?=
BASE ?=
ENGINE ?=
images: ## build the daemons' images, tagged with the version (IMAGES="gateway detector", BASE=local on machines without a registry, ENGINE=docker|buildah|podman)
	$(PY) -m devstack.images build $(if $(ENGINE),--engine $(ENGINE)) $(if $(BASE),--base $(BASE)) $(IMAGES)

REGISTRY ?=
push: ## tag the built images for REGISTRY (e.g. ghcr.io/carmesh, the chart's image.repository) and push them (IMAGES=...)
	@test -n "$(REGISTRY)" || { echo "usage: make push REGISTRY=registry/namespace [IMAGES=...]" >&2; exit 2; }
	$(PY) -m devstack.images push --registry $(REGISTRY) $(if $(ENGINE),--engine $(ENGINE)) $(IMAGES)

image-check: ## build the gateway and detector images with buildah on a debootstrap base and run them (tests/deploy/test_images.py)
	$(PY) -m pytest -q -ra tests/deploy/test_images.py

.PHONY: soak
DURATION ?= 10m
WARMUP ?=
soak: ## mixed load for DURATION (detect, folder source, client stream, a promotion a minute) against `make up`; RSS/fds, failures, latency, frames in vs stored (WARMUP=..., default a fifth)
	$(PY) -m bench.soak --duration $(DURATION) $(if $(WARMUP),--warmup $(WARMUP))
