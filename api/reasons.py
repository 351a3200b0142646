"""Stable, machine-readable reasons that appear in status failures and conditions.

They are part of the API: users alert and automate on them, so they never change meaning.
"""

from typing import Final

# Not a failure: a generation is on its way to the nodes (Ready False, Reconciling True).
PROGRESSING: Final = "Progressing"
COMPILE_ERROR: Final = "CompileError"  # the C source did not compile; message has the diagnostics
VERIFIER_REJECTED: Final = "VerifierRejected"  # the kernel verifier refused the program; log excerpt
FUNCTION_NOT_FOUND: Final = "FunctionNotFound"  # spec.function names no function in the source
UNSUPPORTED_ON_NODE: Final = "UnsupportedOnNode"  # this node's kernel lacks a needed feature
ATTACH_FAILED: Final = "AttachFailed"  # the kernel refused to attach to the pod's cgroup
POD_CGROUP_NOT_FOUND: Final = "PodCgroupNotFound"  # no cgroup v2 directory for the pod (yet)
SOURCE_NOT_FOUND: Final = "SourceNotFound"  # the ConfigMap or key named in spec.source is missing
INVALID_SPEC: Final = "InvalidSpec"  # spec passed the schema but cannot be served (operator check)
AGENT_ERROR: Final = "AgentError"  # unexpected failure in the agent; message says what
AGENT_NOT_REPORTING: Final = "AgentNotReporting"  # the node's agent stopped heartbeating: new pods uncovered
# A Warning event, never a failure: a program's deletion completed without hearing from these nodes'
# silent agents (BPFLEET_DELETE_GRACE_SECONDS passed), so it may still run there.
AGENT_SILENT_ON_DELETE: Final = "DeletedWithSilentAgents"
# Tenancy: what a program may do depends on its kind (EbpfProgram or ClusterEbpfProgram).
HELPER_NOT_ALLOWED: Final = "HelperNotAllowed"  # the loaded code calls a helper its kind may not use
MAP_NOT_ALLOWED: Final = "MapNotAllowed"  # a pinned, shared, public or extern table in a user source
MAP_TOO_LARGE: Final = "MapTooLarge"  # the program's maps need more memory than its cap
# A Warning event (and a note in Ready's message), never a failure: a Namespace's
# bpfleet.io/max-map-bytes is not a positive integer, so the agent's default cap applies.
INVALID_ANNOTATION: Final = "InvalidAnnotation"
# A detach or an unload the kernel refused: it is retried, and the rest of the pass went on.
DETACH_FAILED: Final = "DetachFailed"
# A staged rollout stopped: nodes of its current step failed the new version (which ones, and why,
# are in the message); every node not yet on it keeps the previous version.
ROLLOUT_HALTED: Final = "RolloutHalted"
# Bytecode sources (precompiled ELF objects) and content pinning.
SIGNATURE_INVALID: Final = "SignatureInvalid"  # image unsigned where required, or its signature fails
SOURCE_HASH_MISMATCH: Final = "SourceHashMismatch"  # content's sha256 is not spec.source.sha256
IMAGE_PULL_FAILED: Final = "ImagePullFailed"  # registry unreachable, image missing, auth refused, bad image
REGISTRY_NOT_ALLOWED: Final = "RegistryNotAllowed"  # a tenant's image registry is not on the allowlist

# Failures that will not go away by waiting: the spec has to change (kstatus Stalled).
STALLING: Final = frozenset(
    {
        COMPILE_ERROR,
        VERIFIER_REJECTED,
        FUNCTION_NOT_FOUND,
        UNSUPPORTED_ON_NODE,
        INVALID_SPEC,
        SOURCE_NOT_FOUND,
        HELPER_NOT_ALLOWED,
        MAP_NOT_ALLOWED,
        MAP_TOO_LARGE,
        SIGNATURE_INVALID,
        SOURCE_HASH_MISMATCH,
        REGISTRY_NOT_ALLOWED,
    }
)

ALL: Final = (
    COMPILE_ERROR,
    VERIFIER_REJECTED,
    FUNCTION_NOT_FOUND,
    UNSUPPORTED_ON_NODE,
    ATTACH_FAILED,
    POD_CGROUP_NOT_FOUND,
    SOURCE_NOT_FOUND,
    INVALID_SPEC,
    AGENT_ERROR,
    AGENT_NOT_REPORTING,
    AGENT_SILENT_ON_DELETE,
    HELPER_NOT_ALLOWED,
    MAP_NOT_ALLOWED,
    MAP_TOO_LARGE,
    INVALID_ANNOTATION,
    DETACH_FAILED,
    ROLLOUT_HALTED,
    SIGNATURE_INVALID,
    SOURCE_HASH_MISMATCH,
    IMAGE_PULL_FAILED,
    REGISTRY_NOT_ALLOWED,
)
