"""Acceptance: the API server keeps the node API honest: versions never change, node entries name a
namespace exactly when their kind has one, and spec.rollout takes counts or percentages only."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from bpfleet_api import names, versions
from e2e.kube import Kube
from node_agent.intake import parse_entries
from tests.apiserver.dry_run import CLUSTER_VALID, TENANT_VALID, assert_accepted, assert_refused, spec_variant

pytestmark = pytest.mark.apiserver

RUN = uuid.uuid4().hex[:6]


def _version(name: str) -> dict[str, Any]:
    spec = versions.with_hash(
        {
            "programKind": names.PROGRAM_KIND,
            "programName": "counter",
            "source": {"text": "int f(void *c) { return 1; }", "sha256": "s", "origin": "inline"},
            "function": "f",
            "attach": {"type": "CgroupSkb", "direction": "Egress"},
            "podSelector": {},
        }
    )
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.VERSION_KIND,
        "metadata": {"name": name},
        "spec": spec,
    }


def test_a_version_cannot_be_changed(crds: Kube):
    name = f"counter-{RUN}"
    crds.custom.create_namespaced_custom_object(
        names.GROUP, names.VERSION, "default", names.VERSION_PLURAL, _version(name)
    )
    try:
        with pytest.raises(ApiException) as refused:
            crds.custom.patch_namespaced_custom_object(
                names.GROUP,
                names.VERSION,
                "default",
                names.VERSION_PLURAL,
                name,
                {"spec": {"function": "g"}},
            )
        assert refused.value.status == 422
        assert "EbpfProgramVersion is immutable; a change is a new version" in refused.value.body
        # Labels may still change: only the content is fixed.
        crds.custom.patch_namespaced_custom_object(
            names.GROUP,
            names.VERSION,
            "default",
            names.VERSION_PLURAL,
            name,
            {"metadata": {"labels": {"a": "b"}}},
        )
    finally:
        crds.custom.delete_namespaced_custom_object(
            names.GROUP, names.VERSION, "default", names.VERSION_PLURAL, name
        )


def _node_state(name: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.NODE_STATE_PROGRAMS_KIND,
        "metadata": {"name": name},
        "spec": {"nodeName": name, "programs": entries},
    }


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        pytest.param(
            {"kind": "EbpfProgram", "namespace": "", "name": "p", "generation": 1, "version": "v"},
            "namespace is empty exactly for a ClusterEbpfProgram",
            id="tenant entry without namespace",
        ),
        pytest.param(
            {"kind": "ClusterEbpfProgram", "namespace": "shop", "name": "p", "generation": 1, "version": "v"},
            "namespace is empty exactly for a ClusterEbpfProgram",
            id="cluster entry with a namespace",
        ),
        pytest.param(
            {"kind": "Pod", "namespace": "shop", "name": "p", "generation": 1, "version": "v"},
            "Unsupported value",
            id="unknown kind",
        ),
    ],
)
def test_node_state_entries_are_checked(crds: Kube, entry: dict[str, Any], message: str):
    with pytest.raises(ApiException) as refused:
        crds.custom.create_cluster_custom_object(
            names.GROUP,
            names.VERSION,
            names.NODE_STATE_PROGRAMS_PLURAL,
            _node_state(f"n-{RUN}", [entry]),
            dry_run="All",
        )
    assert refused.value.status == 422
    assert message in refused.value.body


def test_a_node_state_is_stored_whole_and_the_agent_runs_one_entry_per_program(crds: Kube):
    """spec.programs is an atomic list: the API server tracks no field ownership per entry (the
    fleet's cost) and so no longer refuses two entries with one key; the agent's intake, reading
    the object the API server stored, runs the first of them only."""
    entry = {"kind": "EbpfProgram", "namespace": "shop", "name": "p", "generation": 1, "version": "v"}
    name = f"n-dup-{RUN}"
    created = crds.custom.create_cluster_custom_object(
        names.GROUP,
        names.VERSION,
        names.NODE_STATE_PROGRAMS_PLURAL,
        _node_state(name, [entry, {**entry, "version": "w"}]),
    )
    try:
        owned = [m.get("fieldsV1", {}) for m in created["metadata"].get("managedFields", [])]
        assert owned and all("k:" not in json.dumps(fields) for fields in owned), owned
        assert len(created["spec"]["programs"]) == 2  # stored as written
        entries, problems = parse_entries(created)
        assert [(e.key.name, e.version) for e in entries] == [("p", "v")] and problems == []
    finally:
        crds.custom.delete_cluster_custom_object(
            names.GROUP, names.VERSION, names.NODE_STATE_PROGRAMS_PLURAL, name
        )


@pytest.mark.parametrize("base", [TENANT_VALID, CLUSTER_VALID], ids=["EbpfProgram", "ClusterEbpfProgram"])
@pytest.mark.parametrize(
    "rollout",
    [
        {"maxUnavailable": 1},
        {"maxUnavailable": "25%"},
        {"maxUnavailable": "100%"},
        {"canary": {"nodeSelector": {}}},
    ],
)
def test_rollouts_are_accepted(crds: Kube, base: dict[str, Any], rollout: dict[str, Any]):
    assert_accepted(crds, spec_variant(base, rollout=rollout))


@pytest.mark.parametrize("base", [TENANT_VALID, CLUSTER_VALID], ids=["EbpfProgram", "ClusterEbpfProgram"])
@pytest.mark.parametrize("max_unavailable", [0, -1, "0%", "101%", "ten", "5"])
def test_a_bad_max_unavailable_is_refused(crds: Kube, base: dict[str, Any], max_unavailable: Any):
    assert_refused(
        crds,
        spec_variant(base, rollout={"maxUnavailable": max_unavailable}),
        "maxUnavailable is a count of at least 1 or a percentage from 1% to 100%",
    )
