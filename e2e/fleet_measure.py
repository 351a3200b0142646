"""What the fleet benchmark measures outside the operator: API writes from the API server's own
/metrics, storage from etcd itself, a process's CPU and memory from /proc."""

from __future__ import annotations

import base64
import json
import os
import re
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from kubernetes.client import ApiClient

WRITE_VERBS = frozenset({"POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION"})
READ_VERBS = frozenset({"GET", "LIST", "WATCH"})
_SAMPLE = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

# (resource, subresource, verb) -> requests
Writes = Counter[tuple[str, str, str]]


def api_requests(api: ApiClient) -> Writes:
    """Every request the API server has answered so far, by resource, subresource and verb."""
    method, url, headers, body, _ = api.param_serialize(
        "GET", "/metrics", header_params={"Accept": "text/plain"}, auth_settings=["BearerToken"]
    )
    text = api.call_api(method, url, headers, body, _request_timeout=30).response.data.decode()
    writes: Writes = Counter()
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if not match:
            continue
        labels = dict(_LABEL.findall(match["labels"]))
        if "verb" in labels:
            key = (labels.get("resource", ""), labels.get("subresource", ""), labels["verb"])
            writes[key] += int(float(match["value"]))
    return writes


def requests_between(before: Writes, after: Writes, resources: set[str], verbs: frozenset[str]) -> Writes:
    return Counter(
        {
            k: after[k] - before.get(k, 0)
            for k in after
            if k[0] in resources and k[2] in verbs and after[k] > before.get(k, 0)
        }
    )


def etcd_value_bytes(etcd_url: str, prefix: str) -> tuple[int, int]:
    """(keys, bytes of their values) under `prefix`, read from etcd's own range API (its JSON
    gateway), a page at a time."""
    start, end = prefix.encode(), _prefix_end(prefix.encode())
    keys = total = 0
    while True:
        request = {"key": _b64(start), "range_end": _b64(end), "limit": 200}
        found = _post(f"{etcd_url}/v3/kv/range", request)
        kvs = found.get("kvs") or []
        for kv in kvs:
            keys += 1
            total += len(base64.b64decode(kv.get("value", "")))
        if not found.get("more") or not kvs:
            return keys, total
        start = base64.b64decode(kvs[-1]["key"]) + b"\0"


def _prefix_end(prefix: bytes) -> bytes:
    return prefix[:-1] + bytes([prefix[-1] + 1])


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _post(url: str, body: dict[str, object]) -> dict[str, object]:
    request = urllib.request.Request(
        url, json.dumps(body).encode(), {"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        found: dict[str, object] = json.loads(response.read())
        return found


@dataclass(frozen=True)
class ProcessUsage:
    cpu_seconds: float
    rss_bytes: int
    peak_rss_bytes: int


def process_usage(pid: int) -> ProcessUsage:
    """CPU time (user + system, the process and its reaped children) and resident memory."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    ticks = os.sysconf("SC_CLK_TCK")
    # After the command: state is field 3; utime, stime, cutime, cstime are fields 14-17.
    cpu = sum(int(fields[i]) for i in range(11, 15)) / ticks
    status = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line
    )
    return ProcessUsage(cpu, _kib(status.get("VmRSS", "0 kB")), _kib(status.get("VmHWM", "0 kB")))


def _kib(value: str) -> int:
    return int(value.split()[0]) * 1024
