"""Reading compiler and verifier output the way a person would."""

from __future__ import annotations

from bpfleet_api import reasons


def headline(reason: str, message: str) -> str:
    """The one line of a compiler or verifier log that says what is wrong."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if reason == reasons.VERIFIER_REJECTED:
        # The verifier ends with statistics; the line before them is the rejection.
        # BCC appends a generic HINT paragraph; it explains nothing about this program.
        explaining = [
            ln
            for ln in lines
            if not ln.startswith(("processed ", "verification time", "stack depth", "HINT:"))
        ]
        return explaining[-1] if explaining else "rejected by the verifier"
    errors = [ln for ln in lines if "error:" in ln]
    return (errors or lines or ["no details"])[0]
