"""What a compile worker's build hands back, whichever way it was built (BCC or libbpf)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field


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
