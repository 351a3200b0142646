"""Typed errors of the node agent. Each carries the stable reason that ends up in status."""

from __future__ import annotations

from bpfleet_api import reasons


class AgentError(Exception):
    reason: str = reasons.AGENT_ERROR


class KernelError(AgentError):
    """A bpf(2) or cgroup operation failed; errno says how."""

    def __init__(self, message: str, errno: int = 0) -> None:
        super().__init__(message)
        self.errno = errno


class ProgramBuildError(AgentError):
    """Compiling or loading a program failed; the message is meant for the user."""


class CompileError(ProgramBuildError):
    reason = reasons.COMPILE_ERROR


class SandboxError(CompileError):
    """The compile sandbox could not be set up on this node; the message names the missing step."""


class VerifierRejected(ProgramBuildError):
    reason = reasons.VERIFIER_REJECTED


class FunctionNotFound(ProgramBuildError):
    reason = reasons.FUNCTION_NOT_FOUND


class UnsupportedOnNode(ProgramBuildError):
    reason = reasons.UNSUPPORTED_ON_NODE


class HelperNotAllowed(ProgramBuildError):
    reason = reasons.HELPER_NOT_ALLOWED


class MapNotAllowed(ProgramBuildError):
    reason = reasons.MAP_NOT_ALLOWED


class MapTooLarge(ProgramBuildError):
    reason = reasons.MAP_TOO_LARGE


class ImagePullFailed(ProgramBuildError):
    """A bytecode image could not be pulled or is not a bpfman image; never carries a registry's body."""

    reason = reasons.IMAGE_PULL_FAILED


class SignatureInvalid(ProgramBuildError):
    reason = reasons.SIGNATURE_INVALID


class SourceHashMismatch(ProgramBuildError):
    reason = reasons.SOURCE_HASH_MISMATCH


class RegistryNotAllowed(ProgramBuildError):
    reason = reasons.REGISTRY_NOT_ALLOWED


class InvalidSpec(AgentError):
    """An entry this agent refuses to serve: its version breaks a trust rule or cannot be run."""

    reason = reasons.INVALID_SPEC


class TrustViolation(InvalidSpec):
    """The spec asks for what its kind may not have: refused, and what ran of it stops. Any other
    InvalidSpec (a shape this agent cannot read) keeps the last good version running."""


class AttachFailed(AgentError):
    reason = reasons.ATTACH_FAILED


class PodCgroupNotFound(AgentError):
    reason = reasons.POD_CGROUP_NOT_FOUND


class ElfError(AttachFailed):
    """A binary to probe is not an ELF file the agent can read, or lacks the symbol asked for."""


# What a compile worker's reason turns into.
BUILD_ERRORS: dict[str, type[ProgramBuildError]] = {
    reasons.COMPILE_ERROR: CompileError,
    reasons.VERIFIER_REJECTED: VerifierRejected,
    reasons.FUNCTION_NOT_FOUND: FunctionNotFound,
    reasons.HELPER_NOT_ALLOWED: HelperNotAllowed,
    reasons.MAP_NOT_ALLOWED: MapNotAllowed,
    reasons.MAP_TOO_LARGE: MapTooLarge,
    reasons.IMAGE_PULL_FAILED: ImagePullFailed,
    reasons.SIGNATURE_INVALID: SignatureInvalid,
    reasons.SOURCE_HASH_MISMATCH: SourceHashMismatch,
    reasons.REGISTRY_NOT_ALLOWED: RegistryNotAllowed,
    reasons.UNSUPPORTED_ON_NODE: UnsupportedOnNode,
}


class MapNotReadable(KernelError):
    """A pinned map the agent does not read back (per-CPU maps: one value per CPU)."""
