"""Length-delimited protobuf messages: each message's serialized bytes after their length as a
varint, the usual framing of a stream of protobuf messages (Java's ``writeDelimitedTo``, Go's
``protodelim``). Jobs' result files are stored so (``services/jobs/result_files.py``) and the
gateway sends each framed message's bytes as they are, unparsed (``services/gateway/job_results.py``).

Here only the framing: writing it and splitting a stream read in chunks of any size back into
its messages. A stream that ends inside a message, or whose framing cannot be right, raises
``BrokenFraming``; the messages' own bytes are not looked at.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterable

#: A varint of a length takes at most this many bytes (64 bits, 7 a byte).
_MAX_VARINT_BYTES = 10


class BrokenFraming(ValueError):
    """A stream whose framing is wrong: it ends inside a message or a length, or a length is
    malformed or larger than any message it may hold."""


def varint(value: int) -> bytes:
    """``value`` (not negative) as a protobuf varint."""
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def framed(message: bytes) -> bytes:
    """A message's serialized bytes, framed: their length as a varint, then them."""
    return varint(len(message)) + message


def _length(data: bytearray, start: int) -> tuple[int, int] | None:
    """The varint at ``start`` of ``data`` and where it ends; None if ``data`` ends inside it."""
    value = shift = 0
    for at in range(start, min(len(data), start + _MAX_VARINT_BYTES)):
        byte = data[at]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at + 1
        shift += 7
    if len(data) - start >= _MAX_VARINT_BYTES:
        raise BrokenFraming(f"a length at byte {start} runs past {_MAX_VARINT_BYTES} bytes")
    return None


async def messages(chunks: AsyncIterable[bytes], most_bytes: int) -> AsyncGenerator[bytes, None]:
    """The messages' bytes of a framed stream read in ``chunks``, each as soon as it is whole: a
    message may span chunks, and a chunk hold many. Holds one chunk and the message under way.

    Raises:
        BrokenFraming: the stream ends inside a length or a message, a length is malformed, or a
            message would be larger than ``most_bytes`` (said at once, not after reading the rest).
    """
    held = bytearray()  # bytes not yet handed on: the start of the message under way
    needed = 0  # how many ``held`` must be before the message under way can be whole
    read = 0  # bytes of the stream before ``held``, for the errors' positions
    async for chunk in chunks:
        held += chunk
        if len(held) < needed:
            continue
        done = 0
        while True:
            found = _length(held, done)
            if found is None:
                needed = len(held) - done + 1
                break
            size, start = found
            if size > most_bytes:
                raise BrokenFraming(
                    f"a message at byte {read + done} claims {size} bytes, more than {most_bytes}"
                )
            end = start + size
            if end > len(held):
                needed = end - done
                break
            with memoryview(held) as view:
                message = bytes(view[start:end])
            yield message
            done = end
        del held[:done]
        read += done
    if held:
        raise BrokenFraming(
            f"the stream ends inside a message: {len(held)} bytes after its last whole message"
            f" (byte {read}) are not a whole one"
        )
