#!/usr/bin/env bash
# Builds the two container images from their Dockerfiles, unchanged, with podman:
#   bpfleet/operator:dev   from operator/Dockerfile
#   bpfleet/agent:dev      from node_agent/Dockerfile
# No Docker engine and no registry are needed: the base image, debian:bookworm-slim, is made here
# once with debootstrap from the Debian mirror apt already uses, cached as a tarball, and imported
# under the names FROM resolves to. Safe to rerun: what exists is skipped, and the image builds
# reuse podman's layer cache.
#
#   BPFLEET_CACHE      cache root (default ~/.cache/bpfleet); the base tarball goes to images/ below it
#   BPFLEET_IMAGE_TAG  the tag of both images (default dev); e2e/realnode builds under a tag of its
#                      own and retags by image ID, so that builds of other trees on this host never
#                      change what it runs
#
# Containers on this kind of host start only with runc (crun refuses a hybrid cgroup layout) and
# with --ulimit values no higher than this shell's limits; both apply to the build's RUN steps too.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
CACHE=${BPFLEET_CACHE:-$HOME/.cache/bpfleet}
IMAGES_CACHE="$CACHE/images"
BASE_NAMES=(debian:bookworm-slim docker.io/library/debian:bookworm-slim)
ARCH=$(dpkg --print-architecture)
BASE_TARBALL="$IMAGES_CACHE/debian-bookworm-slim-$ARCH.tar"

log() { printf '[build-images] %s\n' "$*" >&2; }
now() { date +%s.%N; }
since() { python3 -c 'import sys; print(f"{float(sys.argv[2]) - float(sys.argv[1]):.1f}s")' "$1" "$(now)"; }

# --- host packages ------------------------------------------------------------------------------------
packages=(podman buildah runc debootstrap)
# shellcheck source=e2e/scripts/lib.sh
. "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/lib.sh"
apt_install_missing "${packages[@]}"

# Without systemd as init, podman must manage cgroups itself and log events to a file.
podman_cmd=(podman)
[ -d /run/systemd/system ] || podman_cmd+=(--cgroup-manager=cgroupfs --events-backend=file)
# Without CAP_SYS_RESOURCE nothing can raise a limit, and runc must set soft and hard ones: take this
# shell's. podman lowers its own RLIMIT_NPROC to 32768 before it starts runc, so nproc is capped there.
nofile=$(ulimit -n)
nproc=$(ulimit -u)
[ "$nofile" = unlimited ] && nofile=1048576
{ [ "$nproc" = unlimited ] || [ "$nproc" -gt 32768 ]; } && nproc=32768
run_opts=(--runtime runc --ulimit "nofile=$nofile:$nofile" --ulimit "nproc=$nproc:$nproc")

# --- the base image -------------------------------------------------------------------------------------

# The URI apt uses for a Debian suite, from sources.list(.d) in one-line or deb822 form; empty if none.
apt_uri_for_suite() {
  python3 - "$1" <<'PY'
import glob, sys

suite = sys.argv[1]
for path in ["/etc/apt/sources.list", *sorted(glob.glob("/etc/apt/sources.list.d/*.list"))]:
    try:
        lines = open(path).read().splitlines()
    except OSError:
        continue
    for line in lines:
        words = line.split("#", 1)[0].split()
        if words[:1] != ["deb"]:
            continue
        words = words[1:]
        if words and words[0].startswith("["):  # options: [arch=amd64 signed-by=...]
            while words and not words[0].endswith("]"):
                words.pop(0)
            words = words[1:]
        if len(words) >= 2 and words[1] == suite:
            print(words[0])
            sys.exit(0)
for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
    for stanza in open(path).read().split("\n\n"):
        fields = {}
        for line in stanza.splitlines():
            if line.startswith("#") or ":" not in line or line[:1].isspace():
                continue
            key, _, value = line.partition(":")
            fields[key.strip().lower()] = value.split()
        if fields.get("enabled", ["yes"]) == ["no"] or "deb" not in fields.get("types", []):
            continue
        if suite in fields.get("suites", []) and fields.get("uris"):
            print(fields["uris"][0])
            sys.exit(0)
PY
}

rootfs=""
cleanup() {
  if [ -n "$rootfs" ] && [ -d "$rootfs" ]; then
    # debootstrap mounts proc and sys in the target; a failed run can leave them there.
    findmnt -R -n -l -o TARGET "$rootfs" 2>/dev/null | sort -r | while read -r m; do umount -l "$m" || true; done
    rm -rf --one-file-system "$rootfs"
  fi
  rm -f "$BASE_TARBALL.partial"
  [ -z "${build_home:-}" ] || rm -rf "$build_home"
}
trap cleanup EXIT

make_base_tarball() {
  local mirror updates security
  mirror=$(apt_uri_for_suite bookworm)
  mirror=${mirror:-http://deb.debian.org/debian}
  updates=$(apt_uri_for_suite bookworm-updates)
  security=$(apt_uri_for_suite bookworm-security)
  mkdir -p "$IMAGES_CACHE"
  rootfs=$(mktemp -d "$IMAGES_CACHE/rootfs.XXXXXX")
  log "debootstrap --variant=minbase bookworm from $mirror (once; cached as $BASE_TARBALL)"
  local start
  start=$(now)
  debootstrap --variant=minbase --arch="$ARCH" bookworm "$rootfs" "$mirror" >"$rootfs.log" 2>&1 || {
    tail -n 20 "$rootfs.log" >&2; rm -f "$rootfs.log"; return 1
  }
  rm -f "$rootfs.log"
  log "debootstrap done in $(since "$start")"

  # What makes the "slim" variant: no docs, man pages or translations, now or in later installs.
  cat >"$rootfs/etc/dpkg/dpkg.cfg.d/docker" <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/groff/*
path-exclude /usr/share/info/*
path-exclude /usr/share/lintian/*
path-exclude /usr/share/linda/*
path-exclude /usr/share/locale/*
path-include /usr/share/locale/locale.alias
EOF
  find "$rootfs/usr/share/doc" -mindepth 1 -not -type d -not -name copyright -delete
  find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete
  rm -rf "$rootfs"/usr/share/{man,groff,info,lintian,linda}/*
  find "$rootfs/usr/share/locale" -mindepth 1 -maxdepth 1 -not -name locale.alias -exec rm -rf {} +
  cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
  echo 'Acquire::Languages "none";' >"$rootfs/etc/apt/apt.conf.d/docker-no-languages"
  echo 'APT::Install-Recommends "false";' >"$rootfs/etc/apt/apt.conf.d/docker-no-recommends"

  # The same suites as debian:bookworm-slim, from the mirrors this host uses.
  rm -f "$rootfs/etc/apt/sources.list"
  {
    printf 'Types: deb\nURIs: %s\nSuites: bookworm%s\nComponents: main\n' "$mirror" \
      "$([ -n "$updates" ] && echo ' bookworm-updates')"
    printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
    if [ -n "$security" ]; then
      printf '\nTypes: deb\nURIs: %s\nSuites: bookworm-security\nComponents: main\n' "$security"
      printf 'Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n'
    fi
  } >"$rootfs/etc/apt/sources.list.d/debian.sources"

  find "$rootfs/var/lib/apt/lists" "$rootfs/var/cache/apt" -type f -delete
  rm -rf "$rootfs"/var/log/*.log "$rootfs"/var/cache/debconf/*-old "$rootfs"/tmp/* "$rootfs"/var/tmp/*
  : >"$rootfs/etc/resolv.conf"       # the runtime mounts its own
  : >"$rootfs/etc/machine-id"
  rm -f "$rootfs/etc/hostname"

  tar --numeric-owner --xattrs -C "$rootfs" -cf "$BASE_TARBALL.partial" .
  mv "$BASE_TARBALL.partial" "$BASE_TARBALL"
  rm -rf --one-file-system "$rootfs"
  rootfs=""
}

if "${podman_cmd[@]}" image exists "${BASE_NAMES[1]}"; then
  log "base image ${BASE_NAMES[1]} exists"
else
  if [ -f "$BASE_TARBALL" ]; then
    log "base tarball cached: $BASE_TARBALL"
  else
    make_base_tarball
  fi
  log "podman import $BASE_TARBALL as ${BASE_NAMES[*]}"
  "${podman_cmd[@]}" import -q \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' \
    "$BASE_TARBALL" "${BASE_NAMES[0]}" >/dev/null
  for name in "${BASE_NAMES[@]:1}"; do
    "${podman_cmd[@]}" tag "${BASE_NAMES[0]}" "$name"
  done
fi

# --- the images -------------------------------------------------------------------------------------------
mkdir -p "$IMAGES_CACHE"

# pip in the build must trust what pip on this host trusts (a TLS-inspecting proxy's CA, say): when
# the host's pip has a CA bundle configured, the RUN steps get a home directory whose pip.conf names a
# copy of it. /root exists in the base image, so mounting over it leaves nothing behind in a layer.
build_home=""
build_mounts=()
host_ca=${PIP_CERT:-$(python3 - <<'PY'
import configparser, os
files = ["/etc/xdg/pip/pip.conf", "/etc/pip.conf", os.path.expanduser("~/.config/pip/pip.conf")]
parser = configparser.ConfigParser()
parser.read(files)
print(parser.get("global", "cert", fallback=""))
PY
)}
if [ -n "$host_ca" ] && [ -f "$host_ca" ]; then
  build_home=$(mktemp -d "$IMAGES_CACHE/build-home.XXXXXX")
  mkdir -p "$build_home/.config/pip"
  cp "$host_ca" "$build_home/.config/pip/ca.crt"
  printf '[global]\ncert = /root/.config/pip/ca.crt\n' >"$build_home/.config/pip/pip.conf"
  build_mounts=(-v "$build_home:/root")
  log "pip in the build trusts the host's CA bundle $host_ca"
fi

build() {
  local tag=$1 dockerfile=$2 start build_log previous current
  build_log="$IMAGES_CACHE/build-${tag//[\/:]/-}.log"
  previous=$("${podman_cmd[@]}" image inspect --format '{{.Id}}' "$tag" 2>/dev/null || true)
  log "building $tag from $dockerfile (log: $build_log)"
  start=$(now)
  "${podman_cmd[@]}" build --network host --pull=never "${run_opts[@]}" "${build_mounts[@]}" \
    -f "$REPO/$dockerfile" -t "$tag" "$REPO" >"$build_log" 2>&1 || {
    tail -n 30 "$build_log" >&2; log "building $tag failed; full log: $build_log"; return 1
  }
  current=$("${podman_cmd[@]}" image inspect --format '{{.Id}}' "$tag")
  # The image this tag named before is unnamed now: remove it, or every rebuild keeps one more.
  # (Refused, harmlessly, while a container still uses it.)
  if [ -n "$previous" ] && [ "$previous" != "$current" ]; then
    "${podman_cmd[@]}" rmi "$previous" >/dev/null 2>&1 || true
  fi
  log "built $tag in $(since "$start") ($("${podman_cmd[@]}" image inspect --format '{{.Size}}' "$tag" |
    python3 -c 'import sys; print(f"{int(sys.stdin.read()) / 1e6:.0f} MB")'))"
}
TAG=${BPFLEET_IMAGE_TAG:-dev}
build "bpfleet/operator:$TAG" operator/Dockerfile
build "bpfleet/agent:$TAG" node_agent/Dockerfile
log "images ready: bpfleet/operator:$TAG bpfleet/agent:$TAG"
