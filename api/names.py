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
# A node's agent: its presence, kernel features and heartbeat.
NODE_STATE_KIND: Final = "BpfleetNode"
NODE_STATE_PLURAL: Final = "bpfleetnodes"
# What one node should run (spec, the operator's) and runs (status, its agent's): one per node,
# named after it, cluster-scoped.
NODE_STATE_PROGRAMS_KIND: Final = "EbpfNodeState"
NODE_STATE_PROGRAMS_PLURAL: Final = "ebpfnodestates"
# One immutable, content-addressed version of a program: its source and build inputs, stored once.
VERSION_KIND: Final = "EbpfProgramVersion"
VERSION_PLURAL: Final = "ebpfprogramversions"
# Where one program runs on every node at once (its version and nodeSelector): one per program,
# beside its versions, written by the operator, matched by each agent against its Node's labels.
PLACEMENT_KIND: Final = "EbpfProgramPlacement"
PLACEMENT_PLURAL: Final = "ebpfprogramplacements"

# Labels, with label_value() of a name. PROGRAM_LABEL on an EbpfProgramVersion or an
# EbpfProgramPlacement names its EbpfProgram, CLUSTER_PROGRAM_LABEL its ClusterEbpfProgram.
PROGRAM_LABEL: Final = f"{GROUP}/program"
CLUSTER_PROGRAM_LABEL: Final = f"{GROUP}/cluster-program"

# Versions of ClusterEbpfPrograms live in the system namespace (the chart's release namespace).
SYSTEM_NAMESPACE_ENV: Final = "BPFLEET_SYSTEM_NAMESPACE"
DEFAULT_SYSTEM_NAMESPACE: Final = "bpfleet-system"
# What a ClusterEbpfProgram's pins and ProgramRefs use as their namespace: no Kubernetes namespace
# can contain '_', so it never meets an EbpfProgram's.
CLUSTER_PIN_NAMESPACE: Final = "_cluster"

# spec.scope of a ClusterEbpfProgram and of versions (absent means SCOPE_PODS).
SCOPE_PODS: Final = "Pods"
SCOPE_NODE: Final = "Node"

# Set by cluster admins on a Namespace: the map memory cap of its EbpfPrograms, in bytes.
MAX_MAP_BYTES_ANNOTATION: Final = f"{GROUP}/max-map-bytes"

# The operator holds this on a program until no live node reports it any more.
OPERATOR_FINALIZER: Final = f"{GROUP}/operator"

# Failures kept in a node's status entry, and in a program's (all nodes; the CRD's maxItems).
MAX_NODE_FAILURES: Final = 10
MAX_PROGRAM_FAILURES: Final = 20
MAX_MESSAGE_CHARS: Final = 2048

# Kubernetes' limit on label values and on DNS-1123 labels.
_MAX_LABEL: Final = 63
_MAX_NAME: Final = 253  # a DNS-1123 subdomain: an object's name
# What is kept of a long name before "-" + 10 hex digits of its hash: 52 + 1 + 10 = 63.
_KEPT: Final = 52
_HASH_CHARS: Final = 10


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:_HASH_CHARS]


def system_namespace() -> str:
    """Where ClusterEbpfPrograms' versions live (env BPFLEET_SYSTEM_NAMESPACE)."""
    return os.environ.get(SYSTEM_NAMESPACE_ENV) or DEFAULT_SYSTEM_NAMESPACE


def version_name(kind: str, namespace: str, program: str, content_hash: str) -> str:
    """The EbpfProgramVersion of a program with this content hash: a DNS-1123 label of at most 63
    characters. `kind` and `namespace` need not be in it: the content hash covers the kind and the
    program name, and versions live in the program's namespace (the system one for cluster kinds)."""
    del kind, namespace  # part of the signature so that callers name the whole identity
    readable = program.replace(".", "-")[:_KEPT].rstrip("-")
    return f"{readable}-{content_hash[:_HASH_CHARS]}"


def placement_name(kind: str, program: str) -> str:
    """The EbpfProgramPlacement of a program, in its versions' namespace. The kind is in the name:
    ClusterEbpfPrograms' placements share the system namespace with that namespace's EbpfPrograms'."""
    name = f"{kind.lower()}.{program}"
    if len(name) <= _MAX_NAME:
        return name
    return f"{name[: _MAX_NAME - _HASH_CHARS - 1].rstrip('-.')}-{_digest(name)}"


def label_value(value: str) -> str:
    """`value` as a label value: itself when it fits in 63 characters, else cut and hashed."""
    if len(value) <= _MAX_LABEL:
        return value
    return f"{value[:_KEPT].rstrip('-._')}-{_digest(value)}"
