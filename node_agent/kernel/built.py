"""What a compile worker's build hands back, whichever way it was built (BCC or libbpf)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from node_agent.kernel import map_memory


class BuildFailure(Exception):
    """The source cannot become a program; `reason` is one of bpfleet_api.reasons."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass
class BuiltProgram:
    # Role -> program fd. "prog" is what the agent attaches; "user" is the user's own function
    # when "prog" is the agent's pod-filter entry point in front of it.
    progs: dict[str, int] = field(default_factory=dict)
    maps: dict[str, int] = field(default_factory=dict)  # map name -> fd
    layouts: dict[str, str] = field(default_factory=dict)  # map name -> layout digest (map_reuse)

    def close(self) -> None:
        for fd in [*self.progs.values(), *self.maps.values()]:
            os.close(fd)
        self.progs.clear()
        self.maps.clear()


def check_map_cap(sizes: Mapping[str, int], max_map_bytes: int | None) -> None:
    """Raises MapTooLarge when the maps' memory (name -> bytes) is over the program's cap."""
    too_large = map_memory.over_cap(sizes, map_memory.cap(max_map_bytes))
    if too_large:
        raise BuildFailure("MapTooLarge", too_large)
