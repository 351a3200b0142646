# The two commands of the README, and a few more for development. Each installs what it needs.
SHELL := /bin/bash
VENV ?= $(CURDIR)/.venv
PYTHON := $(VENV)/bin/python

.PHONY: deps control-plane demo demo-down test lint bench

deps:  ## host packages, kernel headers, bpffs, kubectl + helm, the virtualenv
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

test: control-plane lint  ## every tier: unit, kernel, API server, end to end
	$(PYTHON) -m pytest

bench: control-plane  ## prints apply-to-Ready and pod-to-attached latencies
	$(PYTHON) -m e2e.bench
