#!/usr/bin/env bash
# A kind cluster running bpfleet from this tree, on a Linux host with Docker:
#   1. checks docker (and its engine) and kind, installing kind with `go install` when missing;
#   2. creates the cluster `bpfleet` from e2e/kind/cluster.yaml, or reuses it;
#   3. mounts a bpffs of its own on /sys/fs/bpf in each node (kind nodes have none);
#   4. builds bpfleet/operator:dev and bpfleet/agent:dev with docker and loads them into the nodes;
#   5. applies the CRDs, then installs or upgrades the chart with those images and waits for it.
# Progress goes to stderr; the kubeconfig's path is the one line on stdout. Safe to rerun: the
# cluster is reused, docker's layer cache makes rebuilds quick, and the operator and agents are
# restarted only when an image changed or a node got its bpffs again.
#
#   BPFLEET_CACHE     cache root (default ~/.cache/bpfleet): kubectl and helm from bin/ if there,
#                     kind installed into bin/, the kubeconfig written to kind/bpfleet.kubeconfig
#   KIND_VERSION      kind release `go install`ed when kind is missing (default below)
#   KIND_NODE_IMAGE   node image to create the cluster with (default: the one of that kind release)
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${BPFLEET_CACHE:-$HOME/.cache/bpfleet}
CLUSTER=bpfleet
CONFIG="$REPO/e2e/kind/cluster.yaml"
KUBECONFIG_OUT="$CACHE/kind/$CLUSTER.kubeconfig"
NAMESPACE=bpfleet-system
RELEASE=bpfleet
OPERATOR_IMAGE=bpfleet/operator:dev
AGENT_IMAGE=bpfleet/agent:dev
# Its default node image is Kubernetes v1.35, the version the local control plane is built at.
KIND_VERSION=${KIND_VERSION:-v0.31.0}

log() { printf '[kind-up] %s\n' "$*" >&2; }
die() { log "$*"; exit 1; }

# A tool from bpfleet's cache (install-host-deps.sh puts kubectl and helm there), else from PATH.
find_tool() {
  if [ -x "$CACHE/bin/$1" ]; then
    echo "$CACHE/bin/$1"
  else
    command -v "$1"
  fi
}

# --- the host ---------------------------------------------------------------------------------------
[ "$(uname -s)" = Linux ] || die "needs a Linux host: the nodes share its kernel, and its kernel headers"
# A kind node sees cgroup v2 only when the host has it; the agent attaches to pods' v2 cgroups.
[ -f /sys/fs/cgroup/cgroup.controllers ] ||
  die "needs a host with cgroup v2 (a unified /sys/fs/cgroup): kind nodes inherit the host's layout"
release=$(uname -r)
[ -d "/lib/modules/$release/build" ] ||
  die "no kernel headers for $release (/lib/modules/$release/build): install them (Debian: linux-headers-$release); the agents compile against them"

command -v docker >/dev/null 2>&1 || die "docker is not installed"
if ! docker_error=$(docker info 2>&1 >/dev/null); then
  die "the Docker engine is not reachable (docker info: $(printf '%s' "$docker_error" | tail -n 1))"
fi
KUBECTL=$(find_tool kubectl) || die "kubectl not found in $CACHE/bin or on PATH"
HELM=$(find_tool helm) || die "helm not found in $CACHE/bin or on PATH"
if ! KIND=$(find_tool kind); then
  go=$(command -v go || echo /usr/local/go/bin/go)
  [ -x "$go" ] || die "kind is not installed, and there is no go to install it with (https://kind.sigs.k8s.io)"
  log "installing kind $KIND_VERSION into $CACHE/bin (go install sigs.k8s.io/kind@$KIND_VERSION)"
  mkdir -p "$CACHE/bin"
  GOBIN="$CACHE/bin" "$go" install "sigs.k8s.io/kind@$KIND_VERSION"
  KIND="$CACHE/bin/kind"
fi
log "using $KIND ($("$KIND" version)), $KUBECTL, $HELM"
kubectl() { "$KUBECTL" --kubeconfig "$KUBECONFIG_OUT" "$@"; }

# --- the cluster --------------------------------------------------------------------------------------
mkdir -p "$(dirname "$KUBECONFIG_OUT")"
if "$KIND" get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  log "cluster $CLUSTER exists: reusing it"
else
  create_args=(--name "$CLUSTER" --config "$CONFIG" --wait 5m)
  if [ -n "${KIND_NODE_IMAGE:-}" ]; then
    create_args+=(--image "$KIND_NODE_IMAGE")
  fi
  log "creating cluster $CLUSTER from e2e/kind/cluster.yaml (one control plane, two workers)"
  # --kubeconfig: kind writes there instead of merging the cluster into ~/.kube/config.
  "$KIND" create cluster "${create_args[@]}" --kubeconfig "$KUBECONFIG_OUT"
fi
"$KIND" get kubeconfig --name "$CLUSTER" >"$KUBECONFIG_OUT.partial"
chmod 600 "$KUBECONFIG_OUT.partial"
mv "$KUBECONFIG_OUT.partial" "$KUBECONFIG_OUT"

mapfile -t nodes < <("$KIND" get nodes --name "$CLUSTER")
[ ${#nodes[@]} -gt 0 ] || die "cluster $CLUSTER has no nodes"
for node in "${nodes[@]}"; do
  [ "$(docker inspect -f '{{.State.Running}}' "$node")" = true ] ||
    die "node $node is not running: recreate the cluster (make kind-down kind-up)"
  # A cluster of the same name made otherwise would leave every pod's cgroup unfound by the agent.
  docker exec "$node" grep -Eq '^cgroupRoot: "?/"?$' /var/lib/kubelet/config.yaml ||
    die "cluster $CLUSTER was not created from e2e/kind/cluster.yaml (kubelet's cgroupRoot on $node is not /): make kind-down kind-up"
done

# bpffs: systemd mounts none inside a container and kind adds none, so each node gets its own
# (a bind of the host's would let the three agents see, and adopt, each other's pins). Shared, so
# that the agent's Bidirectional mount of it is allowed. Gone when a node restarts: rerun this.
remounted=0
for node in "${nodes[@]}"; do
  if docker exec "$node" grep -q '^[^ ]* /sys/fs/bpf bpf ' /proc/self/mounts; then
    log "bpffs mounted on $node"
  else
    log "mounting bpffs on /sys/fs/bpf in $node"
    docker exec "$node" mount -t bpf bpf /sys/fs/bpf
    remounted=1
  fi
  docker exec "$node" mount --make-shared /sys/fs/bpf
  # Only tracepoint programs need tracefs; the others run without it.
  if ! docker exec "$node" grep -q '^[^ ]* /sys/kernel/tracing tracefs ' /proc/self/mounts; then
    docker exec "$node" mount -t tracefs tracefs /sys/kernel/tracing ||
      log "no tracefs on $node: tracepoint programs will fail there"
  fi
done

# --- the images ---------------------------------------------------------------------------------------
images_changed=0
build() {
  local tag=$1 dockerfile=$2 before after build_log
  build_log="$CACHE/kind/build-${tag//[\/:]/-}.log"
  before=$(docker image inspect -f '{{.Id}}' "$tag" 2>/dev/null || true)
  log "docker build -f $dockerfile -t $tag (log: $build_log)"
  docker build -f "$REPO/$dockerfile" -t "$tag" "$REPO" >"$build_log" 2>&1 || {
    tail -n 30 "$build_log" >&2
    die "building $tag failed; full log: $build_log"
  }
  after=$(docker image inspect -f '{{.Id}}' "$tag")
  if [ "$before" != "$after" ]; then
    images_changed=1
  fi
}
build "$OPERATOR_IMAGE" operator/Dockerfile
build "$AGENT_IMAGE" node_agent/Dockerfile
# A second tag of the agent's image: the cluster suite's helm upgrade rolls the agents to it.
docker tag "$AGENT_IMAGE" "$AGENT_IMAGE-upgrade"
log "kind load docker-image $OPERATOR_IMAGE $AGENT_IMAGE $AGENT_IMAGE-upgrade"
"$KIND" load docker-image --name "$CLUSTER" "$OPERATOR_IMAGE" "$AGENT_IMAGE" "$AGENT_IMAGE-upgrade" >&2

# --- bpfleet --------------------------------------------------------------------------------------------
log "applying the CRDs (charts/bpfleet/crds/)"
kubectl apply --server-side --force-conflicts -f "$REPO/charts/bpfleet/crds/" >&2
kubectl wait --for=condition=Established --timeout=60s -f "$REPO/charts/bpfleet/crds/" >&2

installed=0
if "$HELM" status "$RELEASE" -n "$NAMESPACE" --kubeconfig "$KUBECONFIG_OUT" >/dev/null 2>&1; then
  installed=1
fi
log "helm upgrade --install $RELEASE charts/bpfleet -n $NAMESPACE (images tagged dev)"
# Agents' metrics on the nodes' addresses: the cluster suite scrapes them through the API server's
# pod proxy, which connects to the pod's (the node's) address, never to its loopback.
"$HELM" upgrade --install "$RELEASE" "$REPO/charts/bpfleet" --kubeconfig "$KUBECONFIG_OUT" \
  -n "$NAMESPACE" --create-namespace \
  --set operator.image.tag=dev --set agent.image.tag=dev \
  --set agent.metrics.bindAddress=0.0.0.0 \
  --skip-crds --wait --timeout 5m >&2

# Same tags, so Helm sees no change: running pods keep an old image, and agents started before
# their node's bpffs was mounted do not see it. Restarting never detaches programs (pins are adopted).
if [ "$installed" = 1 ] && { [ "$images_changed" = 1 ] || [ "$remounted" = 1 ]; }; then
  log "restarting the operator and the agents (new images or a new bpffs)"
  mapfile -t workloads < <(kubectl get deployment,daemonset -n "$NAMESPACE" \
    -l "app.kubernetes.io/instance=$RELEASE" -o name)
  kubectl rollout restart -n "$NAMESPACE" "${workloads[@]}" >&2
  for workload in "${workloads[@]}"; do  # one at a time: rollout status takes a single object
    kubectl rollout status -n "$NAMESPACE" "$workload" --timeout=5m >&2
  done
fi

kubectl get deployment,daemonset -n "$NAMESPACE" -l "app.kubernetes.io/instance=$RELEASE" >&2
log "bpfleet runs on kind cluster $CLUSTER; use it with:"
log "  export KUBECONFIG=$KUBECONFIG_OUT"
echo "$KUBECONFIG_OUT"
