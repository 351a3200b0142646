"""Content hashes of EbpfProgramVersions: canonical, order-free, blind to the hash field itself."""

from __future__ import annotations

import hashlib
import json

from bpfleet_api import versions

SPEC = {
    "programKind": "EbpfProgram",
    "programName": "counter",
    "source": {"text": "int f(void *c) { return 1; }", "sha256": "x", "origin": "inline"},
    "function": "f",
    "attach": {"type": "CgroupSkb", "direction": "Egress"},
    "podSelector": {"matchLabels": {"app": "web"}},
}


def test_the_hash_is_sha256_of_the_sorted_compact_json():
    expected = hashlib.sha256(json.dumps(SPEC, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    assert versions.content_hash(SPEC) == expected


def test_key_order_and_an_existing_hash_do_not_change_it():
    reordered = dict(reversed(list(SPEC.items())))
    assert versions.content_hash(reordered) == versions.content_hash(SPEC)
    assert versions.content_hash({**SPEC, "contentHash": "f" * 64}) == versions.content_hash(SPEC)


def test_any_change_of_content_changes_it():
    changed = {**SPEC, "podSelector": {"matchLabels": {"app": "db"}}}
    assert versions.content_hash(changed) != versions.content_hash(SPEC)


def test_matches_accepts_its_own_hash_and_refuses_a_forged_one():
    hashed = versions.with_hash(SPEC)
    assert versions.matches(hashed)
    assert not versions.matches({**hashed, "function": "g"})
    assert not versions.matches(SPEC)
