"""Runs a plan's actions against the backend, each on its own.

An attach the kernel refuses is that pod's (or target's) Failed state. A detach or unload that
fails is logged, reported in its program's status (DetachFailed) and retried next pass; the rest of
the plan goes on either way. Every action that succeeds is recorded in the observed model.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from bpfleet_api import reasons
from node_agent.actions import Action, Attach, AttachNode, Detach, DetachNode, Unload, Update
from node_agent.errors import AgentError
from node_agent.kernel.backend import KernelBackend, ProgramRef
from node_agent.observed import Observed
from node_agent.reports import FAILED, ProgramReport

log = logging.getLogger(__name__)


@dataclass
class Outcome:
    failed_cleanups: int = 0


def execute(actions: list[Action], backend: KernelBackend, observed: Observed) -> Outcome:
    outcome = Outcome()
    for action in actions:
        try:
            _run(action, backend, observed)
        except Exception as e:
            observed.stale()  # the kernel may be half way: read it again next pass
            _failed(action, e, outcome)
    return outcome


def _run(action: Action, backend: KernelBackend, observed: Observed) -> None:
    match action:
        case Attach():
            _attach(action, backend, observed)
        case Update(old=old, then=then):
            try:
                link = backend.update(old, then.ref, then.pod_uid, then.cgroup, then.attach)
            except (AgentError, OSError) as e:
                log.warning(
                    "cannot update the link in place; attaching beside it",
                    extra={"program": _name(then.ref), "pod": then.pod_name, "error": str(e)},
                )
                _attach(then, backend, observed)
                return
            observed.moved(old, link)
            log.info(
                "updated in place",
                extra={"program": _name(then.ref), "pod": then.pod_name, "from": old.version},
            )
        case Detach(ref=ref, pod_uid=uid):
            backend.detach(ref, uid)
            observed.detached(ref, uid)
        case AttachNode(ref=ref, target=target, attach=attach):
            backend.attach_node(ref, target, attach)
            log.info("attached on the node", extra={"program": _name(ref), "target": target})
        case DetachNode(ref=ref, target=target):
            log.info("detaching from a target that is gone", extra={"program": ref.name, "target": target})
            backend.detach_node(ref, target)
        case Unload(ref=ref):
            log.info("unloading program version", extra={"program": _name(ref), "version": ref.version})
            backend.unload(ref)
            observed.unloaded(ref)


def _attach(action: Attach, backend: KernelBackend, observed: Observed) -> None:
    link = backend.attach(
        action.ref, action.pod_uid, action.cgroup, action.attach, container_id=action.container_id
    )
    observed.attached(link)
    log.info(
        "attached", extra={"program": _name(action.ref), "pod": action.pod_name, "cgroup": str(action.cgroup)}
    )


def _failed(action: Action, error: Exception, outcome: Outcome) -> None:
    if not isinstance(error, (AgentError, OSError)):
        log.exception("unexpected error", extra={"program": _name(_ref(action))})
    if isinstance(action, (Attach, Update)):
        report = action.report if isinstance(action, Attach) else action.then.report
        report.state, report.reason, report.message = FAILED, _reason(error), str(error)
        return
    if isinstance(action, AttachNode):
        action.report.state, action.report.reason, action.report.message = FAILED, _reason(error), str(error)
        return
    what, target, program = _cleanup(action)
    log.warning(
        f"{what} failed", extra={"program": _name(_ref(action)), "target": target, "error": str(error)}
    )
    outcome.failed_cleanups += 1
    if program is not None:
        program.cleanup_failures.append((reasons.DETACH_FAILED, f"{what}: {error}"))


def _cleanup(action: Action) -> tuple[str, str, ProgramReport | None]:
    match action:
        case Detach(pod_uid=uid, program=program):
            return f"detaching pod {uid}", uid, program
        case DetachNode(target=target, program=program):
            return f"detaching {target}", target, program
        case Unload(ref=ref, program=program):
            return f"unloading version {ref.version}", "", program
    raise TypeError(f"not a cleanup action: {action!r}")


def _ref(action: Action) -> ProgramRef:
    return action.then.ref if isinstance(action, Update) else action.ref


def _name(ref: ProgramRef) -> str:
    return f"{ref.namespace}/{ref.name}"


def _reason(error: Exception) -> str:
    return error.reason if isinstance(error, AgentError) else reasons.ATTACH_FAILED
