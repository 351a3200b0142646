"""Names shared by the operator and the node agent: their contract is the Kubernetes API."""

import hashlib
import os
from typing import Final

GROUP: Final = "bpfleet.io"
VERSION: Final = "v1alpha1"
API_VERSION: Final = f"{GROUP}/{VERSION}"

PROGRAM_KIND: Final = "EbpfProgram"
PROGRAM_PLURAL: Final = "ebpfprograms"
NODE_PROGRAM_KIND: Final = "EbpfNodeProgram"
NODE_PROGRAM_PLURAL: Final = "ebpfnodeprograms"
NODE_STATE_KIND: Final = "BpfleetNode"
NODE_STATE_PLURAL: Final = "bpfleetnodes"

# Labels on every EbpfNodeProgram: agents watch their own with a server-side selector on NODE_LABEL.
NODE_LABEL: Final = f"{GROUP}/node"
PROGRAM_LABEL: Final = f"{GROUP}/program"
CLUSTER_PROGRAM_LABEL: Final = f"{GROUP}/cluster-program"
CLUSTER_PROGRAM_KIND: Final = "ClusterEbpfProgram"

# The agent holds this on an EbpfNodeProgram until it has detached and unpinned it on its node.
AGENT_FINALIZER: Final = f"{GROUP}/agent"
# The operator holds this on an EbpfProgram until every live node has detached it.
OPERATOR_FINALIZER: Final = f"{GROUP}/operator"

# Failures kept in a node object's status, and in a program's (all nodes; the CRD's maxItems).
MAX_NODE_FAILURES: Final = 10
MAX_PROGRAM_FAILURES: Final = 20
MAX_MESSAGE_CHARS: Final = 2048


def system_namespace() -> str:
    """Where the node objects of ClusterEbpfPrograms live (the release namespace of the chart)."""
    return os.environ.get("BPFLEET_SYSTEM_NAMESPACE") or "bpfleet-system"


def label_value(s: str) -> str:
    """A valid label value (at most 63 characters) standing for s: s itself when short enough."""
    if len(s) <= 63:
        return s
    return s[:52].rstrip("-._") + "-" + hashlib.sha256(s.encode()).hexdigest()[:10]
