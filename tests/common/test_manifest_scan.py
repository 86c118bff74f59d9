"""The manifest scan the gateway feeds as an upload arrives: however the bytes are split into
blocks, the same line count or the same refusal as the whole file's scan."""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.common import upload_checks
from services.common.errors import InvalidArgument
from services.common.upload_checks import ManifestScan, UploadLimits

#: Bytes that put every case of the scan on a part's edge: newlines, blank space, text, a
#: character of several bytes (or half of one), bytes that are never UTF-8.
_PIECES = st.sampled_from(
    [b"\n", b" ", b"\t", b"\r", b"{}", b"abc", "é".encode(), "€".encode(), b"\xe2", b"\xff"]
)
_DATA = st.lists(_PIECES, max_size=60).map(b"".join)


def outcome(scan: ManifestScan, blocks: list[bytes]) -> tuple[str, str]:
    """The lines counted, or the refusal's reason and message."""
    try:
        for block in blocks:
            scan.feed(block)
        return ("lines", str(scan.finish()))
    except InvalidArgument as err:
        return (err.reason, err.message)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    edges = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(edges)]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=_DATA,
    cuts=st.lists(st.integers(min_value=0, max_value=1000), max_size=8),
    line_limit=st.integers(min_value=1, max_value=12),
    max_entries=st.integers(min_value=1, max_value=8),
)
def test_any_split_of_any_bytes_gets_the_whole_files_answer(
    data: bytes, cuts: list[int], line_limit: int, max_entries: int
) -> None:
    bounds = UploadLimits(max_entries, 1, 1, 1, max_line_bytes=line_limit)
    with tempfile.TemporaryDirectory(prefix="ferry-scan-") as folder:
        path = Path(folder) / "manifest.jsonl"
        path.write_bytes(data)
        try:
            whole = ("lines", str(upload_checks.manifest_lines(path, bounds)))
        except InvalidArgument as err:
            whole = (err.reason, err.message)
    assert outcome(ManifestScan(bounds), split(data, cuts)) == whole, data


@pytest.mark.parametrize("cut", range(1, 9))
def test_a_character_broken_across_blocks_is_named_by_its_first_byte(cut: int) -> None:
    # "€" is three bytes; its first two end a part (the line limit, 5), a letter follows them.
    data = b"abc\xe2\x82x\n"
    bounds = UploadLimits(10, 1, 1, 1, max_line_bytes=5)
    assert outcome(ManifestScan(bounds), [data[:cut], data[cut:]]) == (
        "INVALID_UPLOAD",
        "the upload is neither a zip nor UTF-8 JSONL text (byte 3); POST /v1/uploads takes a JSONL "
        "manifest or a zip of images",
    )
