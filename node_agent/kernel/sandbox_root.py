"""The root filesystem of the compile sandbox: which host trees it shows, and building it.

The compile sees a fresh tmpfs holding read-only binds of only what it needs, found from the
worker itself rather than listed by hand:

- the Python runtime: the standard library (extension modules included), and the packages the
  worker imports inside (bcc, and the project's own node_agent and bpfleet_api);
- the shared libraries: the directories of every shared object mapped into the worker once BCC's
  library is loaded (LLVM and clang among them), the multiarch library directories and the
  loader's cache (/etc/ld.so.cache, all of /etc the compile gets), for libraries BCC loads later;
- the kernel headers: /lib/modules/<release>/build and source and the trees they point to;
- the include directories of the request.

Symlinks met on the way (/lib -> usr/lib, build -> /usr/src/linux-headers-...) are recreated, so
paths resolve inside as outside. Binds are not recursive: a secret mounted below a bound tree stays
out. Nothing else is there: no /sys (no bpffs, tracefs or debugfs), no /var, /run, /home or /root;
a fresh /proc of the sandbox's own PID namespace (its sysctls read-only), /dev with null, zero and
urandom, and an empty, size-limited /tmp.
"""

from __future__ import annotations

import importlib.util
import os
import stat
import sys
import sysconfig
from dataclasses import dataclass, field

from node_agent.errors import SandboxError
from node_agent.kernel.sandbox_sys import (
    MS_NODEV,
    MS_NOEXEC,
    MS_NOSUID,
    MS_RDONLY,
    MS_REMOUNT,
    bind_read_only,
    mount,
    pivot_root,
    umount_detach,
)

LOADER_CACHE = "/etc/ld.so.cache"
MODULES_DIR = "/lib/modules"
PACKAGES = ("bcc", "node_agent", "bpfleet_api")
_DEVICES = {"null": (1, 3), "zero": (1, 5), "urandom": (1, 9)}
# Host-wide knobs a process with CAP_SYS_ADMIN could write through its own /proc.
_PROC_READ_ONLY = ("sys", "sysrq-trigger", "irq", "bus", "fs")
# Where the new root is built: any existing directory will do, since the tmpfs covers it only in
# the sandbox's own mount namespace; it must not hold a tree the sandbox shows.
_MOUNTPOINTS = ("/mnt", "/media", "/srv", "/opt", "/var/tmp", "/tmp")
_MAX_LINKS = 40


@dataclass
class RootPlan:
    """What the new root holds, by host path."""

    binds: dict[str, bool] = field(default_factory=dict)  # real path -> is a directory
    links: dict[str, str] = field(default_factory=dict)  # symlink path -> its target

    def _covered(self, path: str) -> bool:
        return any(path.startswith(tree + "/") for tree, is_dir in self.binds.items() if is_dir)

    def trees(self) -> list[str]:
        """The bound trees, without those inside another bound tree."""
        return sorted(p for p in self.binds if not self._covered(p))

    def symlinks(self) -> dict[str, str]:
        return {p: t for p, t in sorted(self.links.items()) if not self._covered(p)}


def python_trees() -> list[str]:
    # The base interpreter's library, not a virtualenv's (whose site-packages the compile needs not).
    base = {"installed_base": sys.base_prefix, "base": sys.base_prefix}
    platbase = {"installed_platbase": sys.base_exec_prefix, "platbase": sys.base_exec_prefix}
    paths = {sysconfig.get_path("stdlib", vars=base), sysconfig.get_path("platstdlib", vars=platbase)}
    for package in PACKAGES:
        spec = importlib.util.find_spec(package)  # a top-level package is found, not imported
        if spec is not None and spec.submodule_search_locations:
            paths.update(spec.submodule_search_locations)
    return sorted(p for p in paths if p and os.path.isdir(p))


def library_dirs() -> list[str]:
    """The directories of the shared objects mapped into this process, and the multiarch ones."""
    dirs: set[str] = set()
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(None, 5)
            path = fields[5].strip() if len(fields) == 6 else ""
            if path.startswith("/") and ".so" in os.path.basename(path) and os.path.isfile(path):
                dirs.add(os.path.dirname(path))
    multiarch = sysconfig.get_config_var("MULTIARCH")
    if multiarch:
        dirs.update(f"{prefix}/{multiarch}" for prefix in ("/lib", "/usr/lib"))
    libdir = sysconfig.get_config_var("LIBDIR")
    if libdir:
        dirs.add(libdir)
    return sorted(dirs)


def kernel_header_trees(release: str | None = None) -> list[str]:
    release = release or os.uname().release
    return [f"{MODULES_DIR}/{release}/build", f"{MODULES_DIR}/{release}/source"]


def needed_paths(include_dirs: list[str]) -> list[str]:
    return [*python_trees(), *library_dirs(), LOADER_CACHE, *kernel_header_trees(), *include_dirs]


def _follow(path: str, links: dict[str, str]) -> str:
    """The real path of `path`, recording every symlink met on the way."""
    parts = [p for p in os.path.abspath(path).split("/") if p]
    current = "/"
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            current = os.path.dirname(current)
            continue
        candidate = os.path.join(current, part)
        if os.path.islink(candidate):
            hops += 1
            if hops > _MAX_LINKS:
                raise SandboxError(f"too many symlinks under {path}")
            target = os.readlink(candidate)
            links[candidate] = target
            parts = [p for p in target.split("/") if p and p != "."] + parts
            if target.startswith("/"):
                current = "/"
        else:
            current = candidate
    return current


def plan(paths: list[str]) -> RootPlan:
    """The binds and symlinks that show `paths` (absent ones are left out: BCC says what it misses)."""
    root = RootPlan()
    for path in paths:
        if not os.path.exists(path):
            continue
        real = _follow(path, root.links)
        root.binds[real] = os.path.isdir(real)
    return root


def mountpoint(root: RootPlan) -> str:
    for candidate in _MOUNTPOINTS:
        shown = any(t == candidate or t.startswith(candidate + "/") for t in root.trees())
        if os.path.isdir(candidate) and not os.path.islink(candidate) and not shown:
            return candidate
    raise SandboxError(f"no directory to build the sandbox root on (tried {', '.join(_MOUNTPOINTS)})")


def _make_parents(root: str, path: str) -> None:
    os.makedirs(root + os.path.dirname(path), exist_ok=True)


def build(new_root: str, root: RootPlan, tmp_bytes: int) -> None:
    """Builds the root on `new_root` (in a private mount namespace: the host never sees it)."""
    mount("tmpfs", new_root, "tmpfs", MS_NOSUID, "mode=0755,size=4m")
    trees = root.trees()
    try:
        for name in ("proc", "tmp", "dev"):
            os.makedirs(f"{new_root}/{name}", exist_ok=True)
        # /tmp first: a tree below it (a checkout in /tmp, say) gets its mount point on this tmpfs
        # rather than being hidden by it.
        mount("tmpfs", f"{new_root}/tmp", "tmpfs", MS_NOSUID | MS_NODEV, f"mode=1777,size={tmp_bytes}")
        # Mount points and symlinks first, all on the bare tmpfs: nothing is created in a bound tree.
        for tree in trees:
            _make_parents(new_root, tree)
            if root.binds[tree]:
                os.makedirs(new_root + tree, exist_ok=True)
            else:
                open(new_root + tree, "x").close()
        for link, target in root.symlinks().items():
            _make_parents(new_root, link)
            if not os.path.lexists(new_root + link):
                os.symlink(target, new_root + link)
        for name, (major, minor) in _DEVICES.items():
            os.mknod(f"{new_root}/dev/{name}", stat.S_IFCHR | 0o666, os.makedev(major, minor))
    except OSError as e:
        raise SandboxError(f"building the sandbox root: {e}") from e
    for tree in trees:
        bind_read_only(tree, new_root + tree)
    mount("proc", f"{new_root}/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for name in _PROC_READ_ONLY:
        path = f"{new_root}/proc/{name}"
        if os.path.exists(path):
            bind_read_only(path, path)


def enter(new_root: str) -> None:
    """Makes `new_root` this process's / and drops the old root; the new root becomes read-only."""
    old = f"{new_root}/.old"
    try:
        os.mkdir(old)
        pivot_root(new_root, old)
        os.chdir("/")
        umount_detach("/.old")
        os.rmdir("/.old")
    except OSError as e:
        raise SandboxError(f"entering the sandbox root: {e}") from e
    mount(None, "/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID)
