"""JSON merge patch (RFC 7396) over parsed JSON values.

A patch that is a JSON object edits the target member by member: a null
member removes that key, and any other member is merged into the target's
value under the same key, recursively. A target that is not an object is
treated as an empty object first. A patch that is not an object (an array,
string, number, boolean or null) replaces the target whole. So arrays are
never merged element by element, and a merge patch cannot store a null
member inside an object.
"""

from __future__ import annotations

from typing import Any


def apply_merge_patch(target: Any, patch: Any) -> Any:
    """Return target with patch applied; neither argument is modified.

    Values are those json.loads returns: dict, list, str, int, float, bool
    and None. Recursion goes as deep as the patch is nested, so a caller
    that accepts untrusted patches must handle RecursionError.
    """
    if not isinstance(patch, dict):
        return patch
    merged = dict(target) if isinstance(target, dict) else {}
    for name, value in patch.items():
        if value is None:
            merged.pop(name, None)
        else:
            merged[name] = apply_merge_patch(merged.get(name), value)
    return merged
