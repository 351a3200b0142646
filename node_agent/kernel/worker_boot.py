"""Starts the compile worker for bytecode in an interpreter run with `-I -S`.

  python -I -S <this file> node_agent=<dir> bpfleet_api=<dir> -- --socket-fd N [--no-sandbox]

Without `site` the interpreter starts in a fraction of the time (no virtualenv .pth hooks, no
sitecustomize, no site-packages scan: 30-60 ms of the worker's start on a loaded node), and `-I`
keeps the agent's environment and the user's site directory out. The worker's own two packages
are then imported from the directories the agent found them in, named on the command line (an
editable or a wheel install alike). Only the standard library is used here, before they exist.
Bytecode only: the BCC worker needs `bcc` from the system's site directories.
"""

from __future__ import annotations

import importlib.util
import sys

_PACKAGES = ("node_agent", "bpfleet_api")


def install(locations: dict[str, str]) -> None:
    """Makes each package importable from its directory (which need not bear its name)."""
    for name in _PACKAGES:
        directory = locations[name]
        spec = importlib.util.spec_from_file_location(
            name, f"{directory}/__init__.py", submodule_search_locations=[directory]
        )
        if spec is None or spec.loader is None:
            raise ImportError(f"no package {name} in {directory}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)


def split(argv: list[str]) -> tuple[dict[str, str], list[str]]:
    """(package locations, the worker's own arguments) of `name=dir ... -- worker args`."""
    end = argv.index("--")
    locations = dict(arg.split("=", 1) for arg in argv[:end])
    return locations, argv[end + 1 :]


def main() -> None:
    locations, worker_args = split(sys.argv[1:])
    install(locations)
    from node_agent.kernel import compile_worker

    compile_worker.warm_bytecode()
    compile_worker.main(worker_args)


if __name__ == "__main__":
    main()
