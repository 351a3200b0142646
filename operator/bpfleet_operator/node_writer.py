"""Writes EbpfNodeState specs from the desired table: one write per node for however many programs
changed there, and none when the watch shows the node has what it should.

It creates the EbpfNodeState of every node with an agent (owned by its BpfleetNode, so that both go
with the Node). It must not write before every program has been reconciled once since the operator
started: the desired table would lack the programs not seen yet, and writing it would unload them.

It writes through the thin client (bpfleet_api.rest), not the kubernetes package: a rollout is one
write per node, and the generated client's validation and models cost a third more CPU per call.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter

from bpfleet_api import names
from bpfleet_api.errors import ApiError
from bpfleet_api.rest import RestClient
from bpfleet_operator.cluster_cache import ClusterCache
from bpfleet_operator.desired import DesiredTable, Entry

log = logging.getLogger(__name__)

_COLLECTION = f"/apis/{names.GROUP}/{names.VERSION}/{names.NODE_STATE_PROGRAMS_PLURAL}"


@dataclass
class WriteCounts:
    """What the writer did, for metrics and tests."""

    created: int = 0
    patched: int = 0
    by_node: dict[str, int] = field(default_factory=dict)


class NodeWriter:
    def __init__(
        self,
        rest: RestClient,
        desired: DesiredTable,
        cache: ClusterCache,
        writes: Counter | None = None,
    ) -> None:
        self.rest, self.desired, self.cache, self.writes = rest, desired, cache, writes
        # node -> (spec written, resourceVersion the watch showed before): the watch lags a write,
        # and a node queued again meanwhile must not write the same spec twice.
        self._written: dict[str, tuple[list[Entry], str | None]] = {}
        self.counts = WriteCounts()

    def needs_write(self, node: str) -> bool:
        """Whether write(node) would write: the spec the watch shows (or last wrote) is not the desired."""
        return self._pending(node) is not None

    def write(self, node: str) -> None:
        """Brings the node's EbpfNodeState spec to the desired table (call from a worker thread)."""
        wanted = self._pending(node)
        if wanted is None:
            return
        state = self.cache.states.get(node)
        if state is None:
            agent = self.cache.agents.get(node)
            assert agent is not None  # _pending said so
            self._create(node, agent.uid, wanted)
        else:
            self._patch(node, wanted)
        self._written[node] = (wanted, state.resource_version if state else None)
        self.counts.by_node[node] = self.counts.by_node.get(node, 0) + 1

    def _pending(self, node: str) -> list[Entry] | None:
        """The spec to write to the node, or None when there is nothing to write."""
        wanted = self.desired.entries(node)
        state = self.cache.states.get(node)
        seen = state.resource_version if state else None
        written = self._written.get(node)
        if written is not None and written[1] == seen and written[0] == wanted:
            return None  # written already; the watch has not shown it yet
        if state is None:
            # Nobody would serve it without an agent; the BpfleetNode's arrival brings the node back.
            return wanted if self.cache.agents.get(node) is not None else None
        if list(state.spec) == wanted:
            self._written.pop(node, None)
            return None
        return wanted

    def forget(self, node: str) -> None:
        self._written.pop(node, None)

    def _create(self, node: str, agent_uid: str, programs: list[Entry]) -> None:
        body: dict[str, Any] = {
            "apiVersion": names.API_VERSION,
            "kind": names.NODE_STATE_PROGRAMS_KIND,
            # No label, and no empty list of programs: the name says the node, and at 5,000 nodes
            # with a program each a node state's own bytes are most of what etcd holds.
            "metadata": {
                "name": node,
                "ownerReferences": [
                    {
                        "apiVersion": names.API_VERSION,
                        "kind": names.NODE_STATE_KIND,
                        "name": node,
                        "uid": agent_uid,
                    }
                ],
            },
            "spec": {"nodeName": node, **({"programs": programs} if programs else {})},
        }
        log.info("creating node state", extra={"node": node, "programs": len(programs)})
        try:
            self.rest.create(_COLLECTION, body)
            self.counts.created += 1
            if self.writes is not None:
                self.writes.labels("create").inc()
        except ApiError as e:
            if e.status != 409:  # created meanwhile: its watch event brings the node back here
                raise
            return
        self._strip_managed_fields(node)

    def _strip_managed_fields(self, node: str) -> None:
        """Clears the node state's managedFields: the API server then tracks no field ownership of
        it until someone server-side applies it, which nobody does (the operator writes its spec
        and the agent its status, each by merge patch, each held to its half by RBAC and the
        node-binding policy). They were 585 of a one-program node state's 1,300 bytes, a write
        more per node when it joins, none in a rollout."""
        try:
            self.rest.merge_patch(f"{_COLLECTION}/{node}", {"metadata": {"managedFields": [{}]}})
        except ApiError as e:
            if e.status != 404:  # gone with its Node
                raise

    def _patch(self, node: str, programs: list[Entry]) -> None:
        log.debug("writing node state", extra={"node": node, "programs": len(programs)})
        # A merge patch replaces a list whole: the spec's entries are exactly `programs`.
        try:
            self.rest.merge_patch(f"{_COLLECTION}/{node}", {"spec": {"programs": programs}})
        except ApiError as e:
            if e.status != 404:  # gone with its Node: nothing left to write
                raise
            return
        self.counts.patched += 1
        if self.writes is not None:
            self.writes.labels("patch").inc()
