#!/usr/bin/env bash
# What the real node of `make cluster-up` (e2e/realnode) needs on this host, and nothing twice:
# Debian's containerd (1.6), runc, the CNI plugins (bridge, host-local, loopback in /usr/lib/cni),
# podman and buildah for the images, gcc and a static libc for the pause binary. Safe to rerun.
set -euo pipefail
log() { printf '[install-node-deps] %s\n' "$*" >&2; }
# shellcheck source=e2e/scripts/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
apt_install_missing containerd runc containernetworking-plugins podman buildah gcc libc6-dev iproute2 util-linux
# Debian enables containerd's own service on install; without systemd nothing starts it, and the
# real node runs its own containerd on its own socket either way.
log "node packages ready: containerd $(containerd --version | awk '{print $3}'), $(runc --version | head -n1)"
