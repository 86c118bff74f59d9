"""A manifest line that is not JSON is refused with a reason a user can act on (jobs/manifests.py)."""

from __future__ import annotations

import pytest

from services.common.errors import InvalidArgument
from services.jobs.manifests import _parse_line


def test_lines_ending_in_a_carriage_return_alone_are_named_as_such() -> None:
    # Saved with classic Mac line endings, the manifest reads as one line.
    line = '{"image": "uploads/u/a.jpg"}\r{"image": "uploads/u/b.jpg"}\r'
    with pytest.raises(InvalidArgument) as refused:
        _parse_line(line, "uploads/m line 1")
    assert refused.value.reason == "INVALID_MANIFEST"
    assert "carriage return (\\r) alone: end each with \\n" in str(refused.value)


def test_other_malformed_json_says_only_where_it_broke() -> None:
    with pytest.raises(InvalidArgument) as refused:
        _parse_line('{"image": ', "uploads/m line 7")
    assert "line 7: not JSON (Expecting value at column 11)" in str(refused.value)
    assert "carriage return" not in str(refused.value)
