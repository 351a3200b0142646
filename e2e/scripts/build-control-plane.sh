#!/usr/bin/env bash
# Builds etcd, kube-apiserver, kube-controller-manager, kube-scheduler and kubelet from the Go module
# proxy, pinned, and caches the binaries by version outside the repo so that later runs reuse them.
# kube-scheduler and kubelet are for the real node of `make cluster-up` (e2e/realnode); each binary
# is built only when missing, so a cache made before they were added gains just those two.
#
#   BPFLEET_CACHE   cache root (default ~/.cache/bpfleet)
#   KUBE_VERSION    Kubernetes release to build (default below)
#   ETCD_VERSION    etcd release to build (default below)
#
# Prints the directory holding the binaries on its last line.
set -euo pipefail

KUBE_VERSION=${KUBE_VERSION:-v1.35.4}
ETCD_VERSION=${ETCD_VERSION:-v3.6.16}
CACHE=${BPFLEET_CACHE:-$HOME/.cache/bpfleet}
OUT="$CACHE/control-plane/kube-$KUBE_VERSION-etcd-$ETCD_VERSION"
export PATH="$PATH:/usr/local/go/bin"
export GOFLAGS=-mod=mod CGO_ENABLED=0

log() { printf '[build-control-plane] %s\n' "$*" >&2; }

command -v go >/dev/null || { log "go is required (expected at /usr/local/go/bin)"; exit 1; }
mkdir -p "$OUT"

KUBE_COMMANDS=(kube-apiserver kube-controller-manager kube-scheduler kubelet)

# The wrapper module every Kubernetes command is built from; made once, then reused.
prepare_kubernetes_module() {
  local work=$1
  local minor="0.${KUBE_VERSION#v1.}"   # v1.35.4 -> staging modules at v0.35.4
  if [ -f "$work/.ready" ]; then
    cd "$work"
    return
  fi
  rm -rf "$work" && mkdir -p "$work" && cd "$work"
  go mod init bpfleet.local/kube-build >/dev/null 2>&1
  # kubernetes' go.mod pins every k8s.io staging module at v0.0.0 and replaces it with a local
  # path; a consumer must point each one at its published version instead.
  local gomod
  gomod=$(go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["GoMod"])')
  local staging
  staging=$(grep -E '^\s*k8s\.io/[a-z0-9-]+ v0\.0\.0\s*$' "$gomod" | awk '{print $1}' | sort -u)
  for mod in $staging; do
    go mod edit -replace="$mod=$mod@v$minor"
  done
  go mod edit -require="k8s.io/kubernetes@$KUBE_VERSION"
  {
    printf '//go:build tools\n\npackage tools\n\nimport (\n'
    for cmd in "${KUBE_COMMANDS[@]}"; do printf '\t_ "k8s.io/kubernetes/cmd/%s"\n' "$cmd"; done
    printf ')\n'
  } > tools.go
  log "resolving modules"
  go mod tidy -e >/dev/null 2>&1 || true
  local cmd pkgs=()
  for cmd in "${KUBE_COMMANDS[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$cmd@$KUBE_VERSION"); done
  go get "${pkgs[@]}" >&2
  touch .ready
}

build_kubernetes() {
  local work="$CACHE/build/kubernetes-$KUBE_VERSION" cmd
  local ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$(echo "$KUBE_VERSION" | cut -d. -f2)"
  log "building $* $KUBE_VERSION (the first build takes several minutes)"
  prepare_kubernetes_module "$work"
  for cmd in "$@"; do
    log "go build $cmd"
    go build -tags selinux,notest -ldflags "$ldflags" -o "$OUT/$cmd.partial" "k8s.io/kubernetes/cmd/$cmd"
    mv "$OUT/$cmd.partial" "$OUT/$cmd"
  done
}

build_etcd() {
  local work="$CACHE/build/etcd-$ETCD_VERSION"
  rm -rf "$work" && mkdir -p "$work" && cd "$work"
  log "building etcd $ETCD_VERSION"
  go mod init bpfleet.local/etcd-build >/dev/null 2>&1
  go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >&2
  go build -ldflags "-s -w" -o "$OUT/etcd" go.etcd.io/etcd/server/v3
}

[ -x "$OUT/etcd" ] || build_etcd
missing=()
for cmd in "${KUBE_COMMANDS[@]}"; do [ -x "$OUT/$cmd" ] || missing+=("$cmd"); done
[ ${#missing[@]} -eq 0 ] || build_kubernetes "${missing[@]}"
log "control plane binaries ready in $OUT"
echo "$OUT"
