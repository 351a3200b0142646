"""The helper allowlist, enforced on loaded programs before they are pinned.

The check reads the program back from the kernel (its translated instructions), so it judges what
the verifier accepted and will run, whatever the source looked like.
"""

from __future__ import annotations

from node_agent import helper_policy
from node_agent.errors import HelperNotAllowed
from node_agent.kernel import syscalls
from node_agent.kernel.backend import ProgramBuild
from node_agent.kernel.helper_calls import calls
from node_agent.kernel.kallsyms import kernel_symbols


def check_program(prog_fd: int, prog_type: int, cluster: bool) -> None:
    """Raises HelperNotAllowed if the loaded program calls a helper, kfunc or kernel function its
    kind (EbpfProgram, or ClusterEbpfProgram when `cluster`) may not use in a program of this type.
    Raises KernelError if the kernel does not show the program or its symbols."""
    if not helper_policy.checks_anything(cluster):
        return  # a ClusterEbpfProgram may call anything: nothing to read
    # The kernel shows call addresses only through an fd whose opener may read kernel addresses;
    # the compile worker that made `prog_fd` dropped that right, so read through an fd of our own.
    with syscalls.closing_fd(syscalls.prog_fd_by_id(syscalls.prog_info(prog_fd).id)) as own_fd:
        found = calls(syscalls.prog_xlated_insns(own_fd), kernel_symbols())
    refused = helper_policy.disallowed(found, prog_type, cluster)
    if refused:
        raise HelperNotAllowed(helper_policy.refusal(refused, prog_type, cluster))


def check_loaded(progs: dict[str, int], build: ProgramBuild) -> None:
    """check_program for every program a build loaded (by role: "prog", and "user" when the agent's
    pod filter runs in front of the user's function), with the build's kind and program type."""
    for fd in progs.values():
        check_program(fd, build.attach.prog_type, build.cluster)
