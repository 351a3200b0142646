# The two commands of the README, and a few more for development. Each installs what it needs.
SHELL := /bin/bash
VENV ?= $(CURDIR)/.venv
PYTHON := $(VENV)/bin/python

.PHONY: deps control-plane cosign demo demo-down test lint bench bench-fleet chart-lint chart-crds

deps: bytecode-deps  ## host packages, kernel headers, bpffs, kubectl + helm, the virtualenv
	bash e2e/scripts/install-host-deps.sh

control-plane: deps  ## etcd, kube-apiserver, kube-controller-manager built once and cached
	bash e2e/scripts/build-control-plane.sh >/dev/null

demo: control-plane  ## the main job: a local cluster running bpfleet and a counter program
	$(PYTHON) -m e2e.demo up

demo-down:
	$(PYTHON) -m e2e.demo down

lint: deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: control-plane node-deps cosign lint bytecode  ## every tier: unit, kernel, API server, end to end (and a real node)
	$(PYTHON) -m pytest

cosign:  ## the cosign CLI the signature tests sign with, built once from the Go module proxy and cached
	bash e2e/scripts/build-cosign.sh >/dev/null

# CO-RE bytecode (docs/bytecode.md): every builtin and the agent's pod-filter entry program, built with
# clang against a vmlinux.h that bpftool dumps from this host's BTF. CO-RE relocations make the objects
# load on other kernels, so any build host with BTF will do; no kernel headers are needed.
.PHONY: bytecode bytecode-deps bytecode-object
BUILD ?= build
BYTECODE_DIR ?= $(BUILD)/bytecode
VMLINUX_H := $(BUILD)/vmlinux.h
KERNEL_BTF ?= /sys/kernel/btf/vmlinux
CLANG ?= $(shell command -v clang-14 || command -v clang || echo clang-14)
BPFTOOL ?= bpftool
BPF_ARCH := $(subst x86_64,x86,$(subst aarch64,arm64,$(shell uname -m)))
# BPFLEET_BYTECODE selects the bytecode side of bpf/include (bpfleet_portable.h, bpfleet.h).
BPF_CFLAGS := -target bpf -g -O2 -Wall -Wno-unused-function -D__TARGET_ARCH_$(BPF_ARCH) -DBPFLEET_BYTECODE \
	-I $(BUILD) -I bpf/include
BPF_HEADERS := $(wildcard bpf/include/*.h)
BUILTIN_OBJECTS := $(patsubst bpf/programs/%.c,$(BYTECODE_DIR)/%.bpf.o,$(wildcard bpf/programs/*.c))
ENTRY_SOURCE := bpf/bytecode/bpfleet_entry.bpf.c
ENTRY_OBJECT := $(if $(wildcard $(ENTRY_SOURCE)),$(BYTECODE_DIR)/bpfleet_entry.bpf.o)

bytecode: $(BUILTIN_OBJECTS) $(ENTRY_OBJECT)  ## CO-RE objects of the builtins and the pod filter in build/bytecode
	@echo "bytecode: $(words $^) objects in $(BYTECODE_DIR)"

bytecode-deps:  ## clang, llvm and libbpf's headers (Debian), what `make bytecode` needs
	@command -v $(CLANG) >/dev/null && test -e /usr/include/bpf/bpf_helpers.h || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq clang llvm libbpf-dev)

$(VMLINUX_H): | $(KERNEL_BTF)
	@mkdir -p $(@D)
	@echo "  BTF    $@ <- $(KERNEL_BTF)"
	@$(BPFTOOL) btf dump file $(KERNEL_BTF) format c > $@.tmp && mv $@.tmp $@

$(BYTECODE_DIR)/%.bpf.o: bpf/programs/%.c $(VMLINUX_H) $(BPF_HEADERS)
	@mkdir -p $(@D)
	@echo "  CLANG  $@ <- $<"
	@$(CLANG) $(BPF_CFLAGS) -c $< -o $@

$(BYTECODE_DIR)/bpfleet_entry.bpf.o: $(ENTRY_SOURCE) $(VMLINUX_H) $(BPF_HEADERS)
	@mkdir -p $(@D)
	@echo "  CLANG  $@ <- $<"
	@$(CLANG) $(BPF_CFLAGS) -c $< -o $@

# Yours: make bytecode-object SRC=my.bpf.c [OUT=my.bpf.o], then put OUT in a ConfigMap or an image.
OUT ?= $(basename $(basename $(SRC))).bpf.o
bytecode-object:  ## one ELF from your C: SRC=prog.bpf.c [OUT=prog.bpf.o] (docs/bytecode.md)
	@test -n "$(SRC)" || (echo "usage: make bytecode-object SRC=prog.bpf.c [OUT=prog.bpf.o]" >&2; exit 2)
	@$(MAKE) -s --no-print-directory $(VMLINUX_H)
	@echo "  CLANG  $(OUT) <- $(SRC)"
	@$(CLANG) $(BPF_CFLAGS) -c $(SRC) -o $(OUT)

bench: control-plane bytecode  ## prints apply-to-Ready, pod-, cgroup-to-attached, the agent under load and compile times, then the fleet figures
	$(PYTHON) -m e2e.bench
	$(MAKE) bench-fleet

bench-fleet: control-plane  ## the operator at fleet scale with simulated agents: 1,000 nodes x 50 programs, 5,000 x 1
	$(PYTHON) -m e2e.fleet_bench --nodes 1000 --programs 50 --source-bytes 65536
	$(PYTHON) -m e2e.fleet_bench --nodes 5000 --programs 1 --source-bytes 65536

SOAK_MINUTES ?= 60
.PHONY: soak fault-figures
soak: control-plane  ## pod churn and program updates on 2 nodes for SOAK_MINUTES (60); fails if anything grows
	$(PYTHON) -m e2e.soak --minutes $(SOAK_MINUTES)

fault-figures: control-plane  ## recovery times (API server, etcd, agent kill, watch stall), then a SOAK_MINUTES soak
	$(PYTHON) -m e2e.fault_figures --soak-minutes $(SOAK_MINUTES)

.PHONY: images
images:  ## bpfleet/operator:dev and bpfleet/agent:dev from their Dockerfiles, with podman (docs/images.md)
	bash e2e/scripts/build-images.sh

chart-lint: deps  ## helm lint of charts/bpfleet (its schema and templates); the tests also install it
	"$${BPFLEET_CACHE:-$$HOME/.cache/bpfleet}/bin/helm" lint --strict charts/bpfleet

chart-crds:  ## copies crds/ into the chart after an API change (a test fails while they differ)
	cp crds/*.yaml charts/bpfleet/crds/

.PHONY: kind-up kind-down kind-test
kind-up:  ## a kind cluster `bpfleet` running bpfleet built from this tree; needs Docker (docs/install.md)
	bash e2e/scripts/kind-up.sh

kind-down:
	bash e2e/scripts/kind-down.sh

kind-test:  ## kind-up, then the cluster suite e2e/cluster_tests against it
	kubeconfig=$$(bash e2e/scripts/kind-up.sh) && \
	  BPFLEET_CLUSTER_KUBECONFIG="$$kubeconfig" BPFLEET_CLUSTER_UPGRADE_AGENT_TAG=dev-upgrade \
	  $(PYTHON) -m pytest e2e/cluster_tests

.PHONY: cluster-up cluster-down cluster-test
# A local cluster with one real node on this host: kubelet, containerd, runc and the CNI bridge run
# real pods, and the chart runs as pods on it (docs/development.md#a-real-node). No Docker needed.
.PHONY: node-deps
node-deps:  ## containerd, runc, the CNI plugins and podman for the real node (Debian packages)
	bash e2e/scripts/install-node-deps.sh

cluster-up: control-plane node-deps  ## the control plane, kube-scheduler, containerd and kubelet on this host
	$(PYTHON) -m e2e.realnode up >/dev/null

cluster-down:  ## stops the real node and removes all it made (processes, mounts, cgroups, bridge)
	$(PYTHON) -m e2e.realnode down

cluster-test: cluster-up  ## helm install of this tree's images on the real node, then e2e/cluster_tests
	$(PYTHON) -m e2e.realnode install
	BPFLEET_CLUSTER_KUBECONFIG="$$($(PYTHON) -m e2e.realnode kubeconfig)" \
	  BPFLEET_CLUSTER_APP_IMAGE="$$($(PYTHON) -m e2e.realnode app-image)" \
	  BPFLEET_CLUSTER_UPGRADE_AGENT_TAG="$$($(PYTHON) -m e2e.realnode upgrade-tag)" \
	  $(PYTHON) -m pytest e2e/cluster_tests
