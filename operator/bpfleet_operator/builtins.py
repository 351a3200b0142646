"""The vetted program library in bpf/: sources and the contract each builtin declares."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

import yaml


@dataclass(frozen=True)
class Builtin:
    name: str
    source: str
    functions: dict[str, dict[str, str]]
    parameters: dict[str, dict[str, Any]]
    metrics: tuple[dict[str, Any], ...] = ()  # spec.metrics for programs that set none

    def problems(self, spec: dict[str, Any]) -> list[str]:
        """What in a spec this builtin cannot serve, in words for the user."""
        found: list[str] = []
        function = spec.get("function", "")
        wanted = self.functions.get(function)
        if wanted is None:
            found.append(
                f"builtin {self.name} has no function {function!r}; "
                f"it has {', '.join(sorted(self.functions))}"
            )
        else:
            attach = spec.get("attach") or {}
            for key, value in wanted.items():
                field = "type" if key == "attach" else key
                if attach.get(field) != value:
                    found.append(f"function {function} of {self.name} needs attach.{field} {value}")
        params = spec.get("parameters") or {}
        for name in sorted(set(params) - set(self.parameters)):
            found.append(f"builtin {self.name} has no parameter {name}")
        for name, rule in sorted(self.parameters.items()):
            found += _parameter_problems(name, rule, params.get(name))
        return found


def _parameter_problems(name: str, rule: dict[str, Any], value: Any) -> list[str]:
    if value is None:
        return [f"parameter {name} is required"] if rule.get("required") else []
    if rule.get("type") == "integer":
        if not isinstance(value, int) or isinstance(value, bool):
            return [f"parameter {name} must be an integer, not {value!r}"]
        low, high = rule.get("minimum"), rule.get("maximum")
        if (low is not None and value < low) or (high is not None and value > high):
            return [f"parameter {name} must be between {low} and {high}, not {value}"]
    return []


@cache
def catalog() -> dict[str, Builtin]:
    programs = resources.files("bpfleet_bpf") / "programs"
    found = {}
    for meta_file in programs.iterdir():
        if not meta_file.name.endswith(".yaml"):
            continue
        meta = yaml.safe_load(meta_file.read_text())
        source = (programs / f"{meta['name']}.c").read_text()
        found[meta["name"]] = Builtin(
            meta["name"],
            source,
            meta["functions"],
            meta.get("parameters") or {},
            tuple(meta.get("metrics") or ()),
        )
    return found


def metrics_for(spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The program's spec.metrics; when absent, its builtin's (an empty list means none)."""
    if "metrics" in spec:
        return list(spec["metrics"] or [])
    builtin = catalog().get((spec.get("source") or {}).get("builtin", ""))
    return [dict(m) for m in builtin.metrics] if builtin else []
