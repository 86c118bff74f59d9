"""What an upload spooled to disk is, checked before any of it is stored (run in a worker thread).

A zip's directory is at its end, so nothing can be said of a zip until all of it has arrived:
the gateway spools the upload to a file (``uploads.py``, bounded memory) and only then reads it
here. A zip is judged by its directory first (count, names, declared sizes, packing ratio,
encryption), so a bomb is refused before a byte of it is inflated; the files' CRCs and deflate
streams are checked as each file is copied into the object store (``ZipExtFile`` raises at the
end of a file whose CRC does not match). A JSONL manifest is checked as it arrives
(``ManifestScan``, fed each block the gateway spools): UTF-8, its line count and its longest
line, never a whole line in memory, so one past a limit is refused before the rest is sent.
"""

from __future__ import annotations

import codecs
import lzma
import re
import struct
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from services.common import limits
from services.common.errors import InvalidArgument

ZIP = "zip"
JSONL = "jsonl"
#: Read size when scanning a manifest: the memory a scan costs.
_BLOCK_BYTES = 1024 * 1024
#: A line of only whitespace (what ``bytes.strip`` removes), its newline included.
_BLANK_LINE = re.compile(rb"^[ \t\r\x0b\x0c]*\n", re.MULTILINE)
#: What inflating or reading a broken zip file raises (a bad CRC is a BadZipFile; corrupt LZMA data an
#: LZMAError; corrupt bzip2 data a bare OSError, see ``broken``).
ZIP_ERRORS = (
    zipfile.BadZipFile,
    zlib.error,
    lzma.LZMAError,
    EOFError,
    RuntimeError,
    NotImplementedError,
    ValueError,
)


@dataclass(frozen=True)
class UploadLimits:
    """The gateway's upload limits (settings bounded by ``services.common.limits``)."""

    max_entries: int
    max_unpacked_bytes: int
    max_ratio: int
    max_entry_bytes: int
    """Largest file of a zip: the image size limit."""
    max_line_bytes: int = limits.MANIFEST_MAX_LINE_BYTES


#: Folders and files an operating system writes into the zips it makes, beside the user's own:
#: macOS's Finder (``__MACOSX/`` with an ``._<name>`` resource fork per file, ``.DS_Store``) and
#: Windows' Explorer (``Thumbs.db``, ``desktop.ini``). They are not images, so as items they would
#: only fail, and ``.DS_Store`` packs so well that it would pass for a zip bomb.
_OS_FOLDERS = frozenset({"__macosx"})
_OS_FILES = frozenset({".ds_store", "thumbs.db", "ehthumbs.db", "desktop.ini"})


def os_metadata(name: str) -> bool:
    """Whether the zip file ``name`` is an operating system's bookkeeping, not the user's file."""
    *folders, base = name.replace("\\", "/").lower().split("/")
    return base in _OS_FILES or base.startswith("._") or any(f in _OS_FOLDERS for f in folders)


@dataclass(frozen=True)
class Entry:
    """A zip file that becomes a job item: its name in the zip and its unpacked size."""

    name: str
    size: int


def kind_of(head: bytes) -> str:
    """``zip`` for bytes that start like one (``PK``), else ``jsonl``."""
    return ZIP if head.startswith(b"PK") else JSONL


_A_ZIP = "send a zip instead (zip -r photos.zip photos/)"
_ONE_IMAGE = (
    "zip the images into one file first (zip photos.zip *.jpg; `ferry job FILES…` does it), or predict"
    " one image with POST /v1/models/MODEL:predict"
)
#: What a mistaken upload is, by its first bytes (a manifest starts with "{" or blank space), and
#: what to send instead: "neither a zip nor UTF-8 JSONL text (byte 137)" said neither.
_MISTAKES = (
    (b"--", "a multipart form (curl -F); send the file itself as the body: curl --data-binary @FILE"),
    (b"\xff\xd8\xff", f"one JPEG image; {_ONE_IMAGE}"),
    (b"\x89PNG", f"one PNG image; {_ONE_IMAGE}"),
    (b"GIF8", f"one GIF image; {_ONE_IMAGE}"),
    (b"RIFF", f"one RIFF file (a WebP image?); {_ONE_IMAGE}"),
    (b"\x1f\x8b", f"a gzip file; {_A_ZIP}"),
    # Other archives: a tar of manifests was read as one (its header is text), "line 1: not JSON".
    (b"7z\xbc\xaf\x27\x1c", f"a 7-Zip archive; {_A_ZIP}"),
    (b"Rar!\x1a\x07", f"a RAR archive; {_A_ZIP}"),
    (b"\xfd7zXZ\x00", f"an xz file; {_A_ZIP}"),
    (b"BZh", f"a bzip2 file; {_A_ZIP}"),
    (b"\x28\xb5\x2f\xfd", f"a zstd file; {_A_ZIP}"),
    (b"%PDF-", f"a PDF document; {_ONE_IMAGE}"),
    (b"MZ", f"a Windows program (a self-extracting archive?); {_A_ZIP}"),
)
#: Where a tar archive says it is one (POSIX ustar and GNU tar both): its first header's magic.
_TAR_MAGIC_AT = 257
HEAD_BYTES = 512
"""The first bytes of an upload kept to tell what it is (a tar's magic is at byte 257)."""


def refuse_known_mistakes(head: bytes) -> None:
    """Refuses an upload whose first bytes show it is a usual mistake, saying what to send.

    Raises:
        InvalidArgument: INVALID_UPLOAD naming what the upload is.
    """
    for start, what in _MISTAKES:
        if head.startswith(start):
            raise invalid(f"the upload is {what}")
    if head[_TAR_MAGIC_AT : _TAR_MAGIC_AT + 5] == b"ustar":
        raise invalid(f"the upload is a tar archive; {_A_ZIP}")
    if head[4:8] == b"ftyp":
        raise invalid(f"the upload is one HEIC or AVIF image, or a video; {_ONE_IMAGE}")


def invalid(why: str, reason: str = "INVALID_UPLOAD", **metadata: str) -> InvalidArgument:
    """An upload refused: ``why`` and what POST /v1/uploads takes."""
    return InvalidArgument(
        f"{why}; POST /v1/uploads takes a JSONL manifest or a zip of images",
        reason=reason,
        metadata={"field": "body", **metadata},
    )


def open_zip(path: Path, bounds: UploadLimits) -> zipfile.ZipFile:
    """The spooled zip, its directory's size and records counted first (``directory_records``);
    blocking: run it in a worker thread (zipfile reads the whole directory as it opens).

    Raises:
        InvalidArgument: INVALID_UPLOAD when its directory cannot be read, UPLOAD_TOO_MANY_ENTRIES
            when it lists too many records, or too many bytes of them.
    """
    try:
        with path.open("rb") as spooled:
            directory_records(spooled, bounds)
        return zipfile.ZipFile(path)
    except (*ZIP_ERRORS, OSError, struct.error) as err:
        raise invalid(f"the upload starts like a zip but is not a readable one ({err})") from None


#: The zip records zipfile finds a directory by (APPNOTE.TXT 4.3.12-4.3.16), as zipfile reads them.
_END = struct.Struct("<4s4H2LH")
_END64_LOCATOR = struct.Struct("<4sLQL")
_END64 = struct.Struct("<4sQ2H2L4Q")
_RECORD = struct.Struct("<4s4B4HL2L5H2L")
#: Where a directory record's name, extra field and comment lengths are (each two bytes).
_RECORD_LENGTHS = struct.Struct("<3H")
_RECORD_LENGTHS_AT = 28


def directory_records(spooled: BinaryIO, bounds: UploadLimits) -> int:
    """How many records the zip's directory lists, counted before zipfile reads it.

    zipfile reads a directory whole and builds an object per record before anything of it can be
    checked: the bytes the directory may take and the records it may list are bounded here,
    where it is found exactly as zipfile finds it (the end record without a comment, else the
    last one in the file's last 64 KiB, then its zip64 record). A directory that cannot be found
    or walked is zipfile's to refuse.

    Raises:
        InvalidArgument: UPLOAD_TOO_MANY_ENTRIES, past ``UPLOAD_ZIP_RECORDS_PER_ENTRY`` records per
            file the upload may hold, or past ``UPLOAD_MAX_ZIP_DIRECTORY_BYTES``.
    """
    found = _directory(spooled)
    if found is None:
        return 0
    start, size = found
    most = bounds.max_entries * limits.UPLOAD_ZIP_RECORDS_PER_ENTRY
    if size > limits.UPLOAD_MAX_ZIP_DIRECTORY_BYTES:
        raise _too_many_files(
            f"the zip's directory is {size} bytes, more than the "
            f"{limits.describe(limits.UPLOAD_MAX_ZIP_DIRECTORY_BYTES)} an upload's may be",
            bounds,
        )
    spooled.seek(start)
    directory = spooled.read(size)
    records = at = 0
    while at + _RECORD.size <= len(directory) and directory[at : at + 4] == b"PK\x01\x02":
        records += 1
        if records > most:
            raise _too_many_files(
                f"the zip's directory lists more than {most} records (files, folders and an operating "
                "system's bookkeeping)",
                bounds,
            )
        at += _RECORD.size + sum(_RECORD_LENGTHS.unpack_from(directory, at + _RECORD_LENGTHS_AT))
    return records


def _directory(spooled: BinaryIO) -> tuple[int, int] | None:
    """Where the zip's directory starts and its size, as zipfile's ``_EndRecData`` finds them."""
    file_size = spooled.seek(0, 2)
    if file_size < _END.size:
        return None
    spooled.seek(file_size - _END.size)
    last = spooled.read(_END.size)
    if last[:4] == b"PK\x05\x06" and last[-2:] == b"\0\0":
        end_at = file_size - _END.size
    else:
        tail_at = max(file_size - (1 << 16) - _END.size, 0)
        spooled.seek(tail_at)
        tail = spooled.read()
        found = tail.rfind(b"PK\x05\x06")
        if found < 0 or found + _END.size > len(tail):
            return None
        end_at = tail_at + found
        spooled.seek(end_at)
        last = spooled.read(_END.size)
    size = _END.unpack(last)[5]
    start = end_at - size
    if end_at >= _END64_LOCATOR.size + _END64.size:
        spooled.seek(end_at - _END64_LOCATOR.size - _END64.size)
        end64 = spooled.read(_END64.size)
        locator = spooled.read(_END64_LOCATOR.size)
        if locator[:4] == b"PK\x06\x07" and end64[:4] == b"PK\x06\x06":
            size = _END64.unpack(end64)[8]
            start = end_at - _END64_LOCATOR.size - _END64.size - size
    return max(start, 0), size


def _too_many_files(what: str, bounds: UploadLimits, **metadata: str) -> InvalidArgument:
    """UPLOAD_TOO_MANY_ENTRIES for a zip: ``what`` it holds, and the limit."""
    return invalid(
        f"{what} and an upload may hold at most {bounds.max_entries} files (upload_max_entries); "
        "split it into several uploads",
        reason="UPLOAD_TOO_MANY_ENTRIES",
        limit="upload_max_entries",
        max_entries=str(bounds.max_entries),
        **metadata,
    )


@dataclass(frozen=True)
class ZipFiles:
    """A zip's files that become items, and how many it held that are an OS's bookkeeping."""

    files: list[tuple[Entry, zipfile.ZipInfo]]
    skipped: int


def zip_entries(archive: zipfile.ZipFile, bounds: UploadLimits) -> ZipFiles:
    """A zip's files (not folders, not ``os_metadata``) in name order, checked against ``bounds``
    by its directory.

    Raises:
        InvalidArgument: INVALID_UPLOAD (no files, an encrypted file, two files of one name, a
            file over the image limit), UPLOAD_TOO_MANY_ENTRIES, UPLOAD_UNPACKED_TOO_LARGE
            (the total, or one file's packing ratio).
    """
    _refuse_overlaps(archive)
    every = [i for i in archive.infolist() if not i.is_dir()]
    infos = sorted((i for i in every if not os_metadata(i.filename)), key=lambda i: i.filename)
    if not infos:
        extra = " but an operating system's bookkeeping (__MACOSX/, .DS_Store, ...)" if every else ""
        raise invalid(f"the zip holds no files{extra}; put the images in it")
    if len(infos) > bounds.max_entries:
        raise _too_many_files(f"the zip holds {len(infos)} files", bounds, entries=str(len(infos)))
    total = 0
    for before, info in zip([None, *infos], infos, strict=False):
        name = info.filename
        if before is not None and before.filename == name:
            raise invalid(f"the zip holds two files named {name!r}; each file needs its own name")
        if info.flag_bits & 0x1:
            raise invalid(f"{name!r} in the zip is encrypted; Ferry reads unencrypted zips only")
        if info.file_size > bounds.max_entry_bytes:
            raise invalid(
                f"{name!r} in the zip is {info.file_size} bytes unpacked and an image may be at most "
                f"{limits.describe(bounds.max_entry_bytes)}",
                reason="IMAGE_TOO_LARGE",
                entry=name,
                max_bytes=str(bounds.max_entry_bytes),
            )
        ratio = info.file_size / max(info.compress_size, 1)
        if ratio > bounds.max_ratio:
            raise invalid(
                f"{name!r} in the zip unpacks to {ratio:.0f} times its packed size and the limit is "
                f"{bounds.max_ratio} (upload_max_compression_ratio); images do not pack like that",
                reason="UPLOAD_UNPACKED_TOO_LARGE",
                entry=name,
                limit="upload_max_compression_ratio",
            )
        total += info.file_size
        if total > bounds.max_unpacked_bytes:
            raise invalid(
                f"the zip's files hold more than {limits.describe(bounds.max_unpacked_bytes)} "
                "unpacked (upload_max_unpacked_bytes); split it into several uploads",
                reason="UPLOAD_UNPACKED_TOO_LARGE",
                limit="upload_max_unpacked_bytes",
                max_bytes=str(bounds.max_unpacked_bytes),
            )
    return ZipFiles([(Entry(i.filename, i.file_size), i) for i in infos], len(every) - len(infos))


def _refuse_overlaps(archive: zipfile.ZipFile) -> None:
    """Refuses a zip whose files' bytes overlap: each file's data quoting the files after it
    (a zip bomb without compression, which no packing ratio shows: a 525 KB zip of 4,500 such
    files was stored as 856 MB). zipfile refuses them from Python 3.12.2 on; this one does not.

    Raises:
        InvalidArgument: INVALID_UPLOAD naming the two files.
    """
    by_offset = sorted(archive.infolist(), key=lambda i: i.header_offset)
    ends = [i.header_offset for i in by_offset[1:]] + [archive.start_dir]  # the last: the directory
    for info, end in zip(by_offset, ends, strict=False):  # an empty zip: no file, one end
        name_bytes = len(info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437"))
        if info.header_offset + _LOCAL_HEADER_BYTES + name_bytes + info.compress_size > end:
            raise invalid(
                f"{info.filename!r} in the zip overlaps the file or directory after it (its bytes "
                "hold other files: a zip bomb's trick); make the zip again with a zip tool"
            )


#: A zip file's local header before its name (APPNOTE.TXT 4.3.7); its extra field, of a length
#: the directory does not say, only adds to it.
_LOCAL_HEADER_BYTES = 30


def broken(info: zipfile.ZipInfo, err: BaseException) -> bool:
    """Whether ``err``, raised while ``info`` was read, says the file is broken (not the disk):
    bz2's decompressor reports corrupt data as an OSError ("Invalid data stream"), which was a 500."""
    return isinstance(err, ZIP_ERRORS) or (
        type(err) is OSError and info.compress_type == zipfile.ZIP_BZIP2 and not err.errno
    )


def broken_entry(name: str, err: BaseException) -> InvalidArgument:
    """INVALID_UPLOAD for a zip file that failed while it was read (bad CRC, corrupt deflate)."""
    return invalid(f"{name!r} in the zip cannot be read: {err or type(err).__name__}", entry=name)


def manifest_lines(path: Path, bounds: UploadLimits) -> int:
    """How many non-blank lines the spooled JSONL manifest at ``path`` has (``ManifestScan`` fed
    the file in blocks).

    Raises:
        InvalidArgument: as ``ManifestScan``.
    """
    scan = ManifestScan(bounds)
    with path.open("rb") as spooled:
        while block := spooled.read(_BLOCK_BYTES):
            scan.feed(block)
    return scan.finish()


class ManifestScan:
    """A JSONL manifest checked as its bytes arrive: UTF-8, its line count and its longest line,
    never a whole line in memory. The gateway feeds it each block of an upload as it spools it,
    so a manifest past a limit is refused then, not once all of it has arrived.

    Each part is scanned by bytes methods and one regex (C loops), never a Python loop per line
    (a third of that loop's CPU on 4 million short lines, and the GIL held a part at a time,
    not a line: this runs in a worker thread beside the gateway's event loop). The bytes are
    scanned in parts of the line limit (at most 1 MiB) at fixed offsets, whatever the blocks fed:
    only the line running across parts needs measuring, and the answer, or the refusal when the
    manifest breaks several limits, does not depend on how the upload arrived in pieces.
    """

    def __init__(self, bounds: UploadLimits) -> None:
        self._bounds = bounds
        self._part_bytes = min(_BLOCK_BYTES, bounds.max_line_bytes)
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._lines = 0  # non-blank lines ended so far
        self._ended = 0  # lines ended so far, blank ones too: the line being read is number ended + 1
        self._line_bytes = 0  # of the line being read
        self._blank = True  # whether the line being read has only whitespace so far
        self._offset = 0
        self._held = bytearray()  # the part being filled, less than _part_bytes

    def feed(self, block: bytes | bytearray) -> None:
        """Scans the manifest's next bytes (any length).

        Raises:
            InvalidArgument: INVALID_UPLOAD (not UTF-8, a line over max_line_bytes),
                UPLOAD_TOO_MANY_ENTRIES.
        """
        step = self._part_bytes
        at = 0
        if self._held:
            at = step - len(self._held)
            self._held += block[:at]
            if len(self._held) < step:
                return
            self._scan(self._held)
            self._held = bytearray()
        end = at + (len(block) - at) // step * step
        for start in range(at, end, step):
            self._scan(block[start : start + step])
        self._held += block[end:]

    def _scan(self, part: bytes | bytearray) -> None:
        bounds = self._bounds
        pending = len(self._decoder.getstate()[0])  # a character begun in the part before
        try:
            self._decoder.decode(part)
        except UnicodeDecodeError as err:
            at = self._offset - pending + err.start
            raise invalid(f"the upload is neither a zip nor UTF-8 JSONL text (byte {at})") from None
        self._offset += len(part)
        first = part.find(b"\n")
        head = part if first == -1 else part[:first]
        self._line_bytes += len(head)
        self._blank = self._blank and not head.strip()
        _check_line(self._line_bytes, self._ended + 1, bounds)
        if first == -1:
            return
        self._lines += not self._blank
        self._ended += 1
        rest = part[first + 1 :]
        last = rest.rfind(b"\n")
        whole = rest[: last + 1]  # the lines that begin and end in this part
        count = whole.count(b"\n")
        self._lines += count - len(_BLANK_LINE.findall(whole))
        self._ended += count
        _check_lines(self._lines, bounds)
        tail = rest[last + 1 :]
        self._line_bytes, self._blank = len(tail), not tail.strip()

    def finish(self) -> int:
        """How many non-blank lines the manifest has, all of it fed.

        Raises:
            InvalidArgument: INVALID_UPLOAD (ends inside a UTF-8 character, only blank lines),
                UPLOAD_TOO_MANY_ENTRIES.
        """
        self._scan(self._held)
        self._held = bytearray()
        try:
            self._decoder.decode(b"", final=True)
        except UnicodeDecodeError:
            raise invalid("the upload ends inside a UTF-8 character; it is not JSONL text") from None
        lines = self._lines + (not self._blank)
        _check_lines(lines, self._bounds)
        if not lines:
            raise invalid("the manifest has only blank lines (one item per line)")
        return lines


def _check_line(line_bytes: int, number: int, bounds: UploadLimits) -> None:
    if line_bytes > bounds.max_line_bytes:
        raise invalid(
            f"line {number} of the manifest is longer than {limits.describe(bounds.max_line_bytes)}; "
            "put big images in a zip upload and name them by uploads/<id>/<file>",
            limit="manifest_max_line_bytes",
        )


def _check_lines(lines: int, bounds: UploadLimits) -> None:
    if lines > bounds.max_entries:
        raise invalid(
            f"the manifest has more than {bounds.max_entries} lines (upload_max_entries), a job's "
            "most items; split it into several uploads",
            reason="UPLOAD_TOO_MANY_ENTRIES",
            limit="upload_max_entries",
            max_entries=str(bounds.max_entries),
        )
