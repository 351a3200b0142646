#!/usr/bin/env bash
# Builds the cosign CLI from the Go module proxy, pinned, into the bpfleet cache, so that the
# signature tests sign images with the real tool. A no-op when the binary is already cached.
#
#   BPFLEET_CACHE   cache root (default ~/.cache/bpfleet)
#   COSIGN_VERSION  cosign release to build (default below)
#
# Prints the cosign binary's path on its last line.
set -euo pipefail

COSIGN_VERSION=${COSIGN_VERSION:-v2.6.5}
CACHE=${BPFLEET_CACHE:-$HOME/.cache/bpfleet}
OUT="$CACHE/cosign-$COSIGN_VERSION"
export PATH="$PATH:/usr/local/go/bin"
export GOFLAGS=-mod=mod CGO_ENABLED=0

log() { printf '[build-cosign] %s\n' "$*" >&2; }

if [ ! -x "$OUT/cosign" ]; then
  command -v go >/dev/null || { log "go is required (expected at /usr/local/go/bin)"; exit 1; }
  mkdir -p "$OUT"
  log "building cosign $COSIGN_VERSION (the first build takes several minutes)"
  GOBIN="$OUT" go install -ldflags "-s -w" "github.com/sigstore/cosign/v2/cmd/cosign@$COSIGN_VERSION" >&2
fi
echo "$OUT/cosign"
