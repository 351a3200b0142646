"""python -m e2e.realnode {up,down,status,install,kubeconfig,app-image,upgrade-tag}"""

from __future__ import annotations

import sys

from e2e.realnode import cluster
from e2e.realnode.layout import Layout


def main(argv: list[str]) -> int:
    commands = ("up", "down", "status", "install", "kubeconfig", "app-image", "upgrade-tag")
    if len(argv) != 1 or argv[0] not in commands:
        print(f"usage: python -m e2e.realnode {{{','.join(commands)}}}", file=sys.stderr)
        return 2
    layout = Layout.default()
    command = argv[0]
    if command == "up":
        cluster.up(layout)
        print(layout.kubeconfig)
    elif command == "down":
        cluster.down(layout)
    elif command == "install":
        cluster.install(layout)
    elif command == "kubeconfig":
        print(layout.kubeconfig)
    elif command == "app-image":
        print(cluster.load_images(layout).app)
    elif command == "upgrade-tag":
        print(cluster.upgrade_ref(cluster.load_images(layout)).rpartition(":")[2])
    else:
        return cluster.status(layout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
