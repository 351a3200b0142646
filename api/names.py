"""Names shared by the operator and the node agent: their contract is the Kubernetes API."""

from __future__ import annotations

import hashlib
import os
from typing import Final

GROUP: Final = "bpfleet.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"

# The two program kinds: a tenant's (namespaced) and a cluster admin's (cluster-scoped).
PROGRAM_KIND: Final = "EbpfProgram"
PROGRAM_PLURAL: Final = "ebpfprograms"
CLUSTER_PROGRAM_KIND: Final = "ClusterEbpfProgram"
CLUSTER_PROGRAM_PLURAL: Final = "clusterebpfprograms"
PROGRAM_KINDS: Final = (PROGRAM_KIND, CLUSTER_PROGRAM_KIND)
NODE_PROGRAM_KIND: Final = "EbpfNodeProgram"
NODE_PROGRAM_PLURAL: Final = "ebpfnodeprograms"
NODE_STATE_KIND: Final = "BpfleetNode"
NODE_STATE_PLURAL: Final = "bpfleetnodes"

# Labels on every EbpfNodeProgram, with label_value() of a name: agents watch their own with a
# server-side selector on NODE_LABEL. PROGRAM_LABEL names an EbpfProgram, CLUSTER_PROGRAM_LABEL a
# ClusterEbpfProgram.
NODE_LABEL: Final = f"{GROUP}/node"
PROGRAM_LABEL: Final = f"{GROUP}/program"
CLUSTER_PROGRAM_LABEL: Final = f"{GROUP}/cluster-program"

# Node objects of ClusterEbpfPrograms live in the system namespace (the chart's release namespace).
SYSTEM_NAMESPACE_ENV: Final = "BPFLEET_SYSTEM_NAMESPACE"
DEFAULT_SYSTEM_NAMESPACE: Final = "bpfleet-system"
# What a ClusterEbpfProgram's pins and ProgramRefs use as their namespace: no Kubernetes namespace
# can contain '_', so it never meets an EbpfProgram's.
CLUSTER_PIN_NAMESPACE: Final = "_cluster"

# spec.scope of a ClusterEbpfProgram and of node objects (absent means SCOPE_PODS).
SCOPE_PODS: Final = "Pods"
SCOPE_NODE: Final = "Node"

# Set by cluster admins on a Namespace: the map memory cap of its EbpfPrograms, in bytes.
MAX_MAP_BYTES_ANNOTATION: Final = f"{GROUP}/max-map-bytes"

# The agent holds this on an EbpfNodeProgram until it has detached and unpinned it on its node.
AGENT_FINALIZER: Final = f"{GROUP}/agent"
# The operator holds this on a program until every live node has detached it.
OPERATOR_FINALIZER: Final = f"{GROUP}/operator"

# Failures kept in a node object's status, and in a program's (all nodes; the CRD's maxItems).
MAX_NODE_FAILURES: Final = 10
MAX_PROGRAM_FAILURES: Final = 20
MAX_MESSAGE_CHARS: Final = 2048

# Kubernetes' limit on label values and on DNS-1123 labels.
_MAX_LABEL: Final = 63
# What is kept of a long name before "-" + 10 hex digits of its hash: 52 + 1 + 10 = 63.
_KEPT: Final = 52
_HASH_CHARS: Final = 10


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:_HASH_CHARS]


def system_namespace() -> str:
    """Where ClusterEbpfPrograms' node objects live (env BPFLEET_SYSTEM_NAMESPACE)."""
    return os.environ.get(SYSTEM_NAMESPACE_ENV) or DEFAULT_SYSTEM_NAMESPACE


def node_program_name(kind: str, namespace: str, program: str, node: str) -> str:
    """The EbpfNodeProgram of (program, node): a DNS-1123 label of at most 63 characters.

    The readable part may be cut or shared by two pairs ("a-b" on "c", "a" on "b-c"); the hash of
    the whole identity (namespace "" for a ClusterEbpfProgram) keeps the names apart."""
    readable = f"{program}-{node}".replace(".", "-")[:_KEPT].rstrip("-")
    return f"{readable}-{_digest(f'{kind}/{namespace}/{program}/{node}')}"


def label_value(value: str) -> str:
    """`value` as a label value: itself when it fits in 63 characters, else cut and hashed."""
    if len(value) <= _MAX_LABEL:
        return value
    return f"{value[:_KEPT].rstrip('-._')}-{_digest(value)}"
