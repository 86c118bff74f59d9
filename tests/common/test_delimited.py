"""Length-delimited messages (services/common/delimited.py): the framing of jobs' result files,
split back into its messages however the store's chunks cut it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from google.protobuf.internal import decoder, encoder
from hypothesis import given
from hypothesis import strategies as st

from services.common.delimited import BrokenFraming, framed, messages, varint

MOST = 1 << 20


async def _chunks(data: bytes, cuts: list[int]) -> AsyncIterator[bytes]:
    """``data`` cut at ``cuts`` (positions, any order, repeats give empty chunks)."""
    start = 0
    for cut in sorted(cuts):
        yield data[start:cut]
        start = cut
    yield data[start:]


def split(data: bytes, cuts: list[int], most: int = MOST) -> list[bytes]:
    async def read() -> list[bytes]:
        return [message async for message in messages(_chunks(data, cuts), most)]

    return asyncio.run(read())


# Lengths around varint's byte boundaries (127/128, 16383/16384) come up among the sizes.
some_messages = st.lists(
    st.one_of(st.binary(max_size=300), st.integers(120, 17_000).map(lambda n: bytes([n % 251]) * n)),
    max_size=12,
)


@given(st.integers(0, 2**64 - 1))
def test_a_varint_is_protobufs_own(value: int) -> None:
    assert varint(value) == encoder._VarintBytes(value)  # type: ignore[attr-defined]
    assert decoder._DecodeVarint(varint(value), 0) == (value, len(varint(value)))  # type: ignore[attr-defined]


@given(some_messages, st.data())
def test_any_split_of_any_messages_gives_back_exactly_the_messages(
    sent: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(framed(message) for message in sent)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=20))
    assert split(stream, cuts) == sent


@given(some_messages.filter(any), st.data())
def test_a_stream_cut_short_anywhere_inside_a_message_is_broken(
    sent: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(framed(message) for message in sent)
    ends = {sum(len(framed(m)) for m in sent[:k]) for k in range(len(sent) + 1)}  # between messages
    end = data.draw(st.integers(0, len(stream) - 1).filter(lambda n: n not in ends))
    cuts = data.draw(st.lists(st.integers(0, end), max_size=5))
    with pytest.raises(BrokenFraming, match="ends inside a message"):
        split(stream[:end], cuts)


def test_the_messages_before_the_break_come_first() -> None:
    stream = framed(b"first") + framed(b"second")[:-1]
    got: list[bytes] = []

    async def read() -> None:
        async for message in messages(_chunks(stream, [3]), MOST):
            got.append(message)

    with pytest.raises(BrokenFraming):
        asyncio.run(read())
    assert got == [b"first"]


def test_a_length_larger_than_any_message_is_broken_at_once() -> None:
    taken = 0

    async def endless() -> AsyncIterator[bytes]:  # would never end if the length were believed
        nonlocal taken
        yield framed(b"ok") + varint(MOST + 1)
        while True:
            taken += 1
            yield b"\0" * 1024

    async def read() -> list[bytes]:
        return [message async for message in messages(endless(), MOST)]

    with pytest.raises(BrokenFraming, match=f"claims {MOST + 1} bytes, more than {MOST}"):
        asyncio.run(read())
    assert taken == 0


def test_a_length_of_more_than_ten_bytes_is_broken() -> None:
    with pytest.raises(BrokenFraming, match="runs past 10 bytes"):
        split(b"\xff" * 11 + b"x", [4])


def test_an_empty_stream_has_no_messages_and_an_empty_message_is_one() -> None:
    assert split(b"", []) == []
    assert split(framed(b"") * 3, [1]) == [b"", b"", b""]
