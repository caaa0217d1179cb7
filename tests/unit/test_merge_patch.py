"""Tests of apply_merge_patch against the examples of RFC 7396, appendix A, and more."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from sessiond_server.merge_patch import apply_merge_patch

# (original, patch, result) as JSON text, in the order of RFC 7396, appendix A.
RFC_7396_EXAMPLES = [
    ('{"a":"b"}', '{"a":"c"}', '{"a":"c"}'),
    ('{"a":"b"}', '{"b":"c"}', '{"a":"b","b":"c"}'),
    ('{"a":"b"}', '{"a":null}', "{}"),
    ('{"a":"b","b":"c"}', '{"a":null}', '{"b":"c"}'),
    ('{"a":["b"]}', '{"a":"c"}', '{"a":"c"}'),
    ('{"a":"c"}', '{"a":["b"]}', '{"a":["b"]}'),
    ('{"a":{"b":"c"}}', '{"a":{"b":"d","c":null}}', '{"a":{"b":"d"}}'),
    ('{"a":[{"b":"c"}]}', '{"a":[1]}', '{"a":[1]}'),
    ('["a","b"]', '["c","d"]', '["c","d"]'),
    ('{"a":"b"}', '["c"]', '["c"]'),
    ('{"a":"foo"}', "null", "null"),
    ('{"a":"foo"}', '"bar"', '"bar"'),
    ('{"e":null}', '{"a":1}', '{"e":null,"a":1}'),
    ("[1,2]", '{"a":"b","c":null}', '{"a":"b"}'),
    ("{}", '{"a":{"bb":{"ccc":null}}}', '{"a":{"bb":{}}}'),
]


@pytest.mark.parametrize(("original", "patch", "expected"), RFC_7396_EXAMPLES)
def test_rfc_7396_examples(original: str, patch: str, expected: str) -> None:
    result = apply_merge_patch(json.loads(original), json.loads(patch))

    assert result == json.loads(expected)


def test_rfc_7396_section_3_example() -> None:
    original = {
        "title": "Goodbye!",
        "author": {"givenName": "John", "familyName": "Doe"},
        "tags": ["example", "sample"],
        "content": "This will be unchanged",
    }
    patch = {
        "title": "Hello!",
        "phoneNumber": "+01-123-456-7890",
        "author": {"familyName": None},
        "tags": ["example"],
    }

    result = apply_merge_patch(original, patch)

    assert result == {
        "title": "Hello!",
        "author": {"givenName": "John"},
        "tags": ["example"],
        "content": "This will be unchanged",
        "phoneNumber": "+01-123-456-7890",
    }


# Cases beyond the RFC's table: scalar targets, types that compare equal in
# Python, and removal of a key that is not there.
MORE_CASES: list[tuple[Any, Any, Any]] = [
    ("text", {"a": 1}, {"a": 1}),
    (None, {"a": {"b": None}}, {"a": {}}),
    (7, {}, {}),
    ({"a": 1}, {}, {"a": 1}),
    ({"a": 1}, {"missing": None}, {"a": 1}),
    ({"a": {"b": 1}}, {"a": 0}, {"a": 0}),
    ({"a": 0}, {"a": False}, {"a": False}),
    (
        {"a": {"x": 1, "y": 2}},
        {"a": {"x": None, "z": [None]}},
        {"a": {"y": 2, "z": [None]}},
    ),
    ({"big": 1}, {"big": 2**64 + 1}, {"big": 2**64 + 1}),
]


@pytest.mark.parametrize(("original", "patch", "expected"), MORE_CASES)
def test_more_cases(original: Any, patch: Any, expected: Any) -> None:
    result = apply_merge_patch(original, patch)

    # Comparing JSON text keeps False apart from 0, which == does not.
    assert json.dumps(result, sort_keys=True) == json.dumps(expected, sort_keys=True)


def test_inputs_not_modified() -> None:
    original = {"a": {"b": 1, "c": [1, 2]}, "d": "keep"}
    patch = {"a": {"b": None, "e": {"f": 1}}, "d": None}
    original_before = copy.deepcopy(original)
    patch_before = copy.deepcopy(patch)

    result = apply_merge_patch(original, patch)

    assert result == {"a": {"c": [1, 2], "e": {"f": 1}}}
    assert original == original_before
    assert patch == patch_before
