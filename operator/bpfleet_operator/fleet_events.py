"""Which Node and BpfleetNode events change a fan-out. Pure: no API calls.

Which nodes' EbpfNodeStates list a program depends on which Nodes exist, their labels, and
which of them run an agent. Kubelets and agents update their objects every few seconds
(heartbeats, status): queueing every program for those would make the work grow with nodes times
programs for nothing.
"""

from __future__ import annotations

from collections.abc import Mapping


class FanoutInputs:
    """What this process last saw of Nodes' labels and of BpfleetNodes."""

    def __init__(self) -> None:
        self.node_labels: dict[str, dict[str, str]] = {}
        self.agents: set[str] = set()

    def node_event(self, name: str, labels: Mapping[str, str] | None, deleted: bool) -> bool:
        """True when a Node joined, left or was relabelled."""
        if deleted:
            return self.node_labels.pop(name, None) is not None
        labels = dict(labels or {})
        if self.node_labels.get(name) == labels:
            return False
        self.node_labels[name] = labels
        return True

    def agent_event(self, name: str, deleted: bool, was_silent: bool) -> bool:
        """True when an agent started (its BpfleetNode appeared), went away, or a silent one spoke."""
        if deleted:
            if name not in self.agents:
                return False
            self.agents.discard(name)
            return True
        if name not in self.agents:
            self.agents.add(name)
            return True
        return was_silent
