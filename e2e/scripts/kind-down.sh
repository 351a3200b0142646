#!/usr/bin/env bash
# Deletes the kind cluster of kind-up.sh and its kubeconfig. Safe to rerun: nothing to delete is
# not an error. The images stay in docker, so a later kind-up rebuilds from its cache.
#
#   BPFLEET_CACHE   cache root (default ~/.cache/bpfleet), as for kind-up.sh
set -euo pipefail

CACHE=${BPFLEET_CACHE:-$HOME/.cache/bpfleet}
CLUSTER=bpfleet
KUBECONFIG_OUT="$CACHE/kind/$CLUSTER.kubeconfig"

log() { printf '[kind-down] %s\n' "$*" >&2; }

if [ -x "$CACHE/bin/kind" ]; then
  KIND="$CACHE/bin/kind"
elif ! KIND=$(command -v kind); then
  log "kind is not installed: no cluster to delete"
  rm -f "$KUBECONFIG_OUT"
  exit 0
fi

if "$KIND" get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  log "deleting kind cluster $CLUSTER"
  # --kubeconfig: the cluster's entry is in that file, not in ~/.kube/config.
  "$KIND" delete cluster --name "$CLUSTER" --kubeconfig "$KUBECONFIG_OUT"
else
  log "no kind cluster $CLUSTER"
fi
rm -f "$KUBECONFIG_OUT"
log "done"
