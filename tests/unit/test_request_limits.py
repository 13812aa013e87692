"""The gateway's JSON depth bound (issue 13): exact at the limit, blind to brackets inside strings."""
from __future__ import annotations

import json
import time

import pytest

from gateway.request_limits import MAX_JSON_DEPTH, MAX_TRANSCRIPT_BYTES, body_problem, nests_deeper_than


def nested(depth: int) -> bytes:
    return ('{"a": ' * depth + "1" + "}" * depth).encode()


def test_the_bound_is_exact() -> None:
    assert not nests_deeper_than(nested(MAX_JSON_DEPTH), MAX_JSON_DEPTH)
    assert nests_deeper_than(nested(MAX_JSON_DEPTH + 1), MAX_JSON_DEPTH)
    assert nests_deeper_than(b"[" * 150 + b"]" * 150, MAX_JSON_DEPTH)


@pytest.mark.parametrize("value", [
    {"text": "[" * 200}, {"text": '\\"' + "{" * 200}, {"text": "\\\\", "list": [[1]] * 500},
    [{"role": "user", "content": "a [ b { c"}] * 300,
])
def test_brackets_inside_strings_do_not_count(value: object) -> None:
    assert not nests_deeper_than(json.dumps(value).encode(), MAX_JSON_DEPTH)


def test_an_escaped_backslash_before_a_quote_ends_the_string() -> None:
    body = json.dumps({"s": "\\", "x": json.loads(nested(40))}).encode()  # "s": "\\" then real brackets
    assert nests_deeper_than(body, MAX_JSON_DEPTH)


def test_a_deep_body_is_an_invalid_payload_naming_the_limit() -> None:
    assert f"deeper than {MAX_JSON_DEPTH}" in (body_problem(nested(100), "application/json") or "")
    assert body_problem(nested(100), "text/plain") is None  # not JSON: the route answers 415


def test_the_largest_body_is_checked_quickly() -> None:
    body = b"[" * (MAX_TRANSCRIPT_BYTES // 2) + b"]" * (MAX_TRANSCRIPT_BYTES // 2)
    started = time.perf_counter()
    assert nests_deeper_than(body, MAX_JSON_DEPTH)
    assert time.perf_counter() - started < 2.0  # tens of milliseconds
