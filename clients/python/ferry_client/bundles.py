"""Image files of a job bundled into one zip, for jobs too large to send inline.

CreateJob carries its inputs in one request, which the edge limits to 32 MiB (``UPLOAD_REQUEST_BYTES``
on the server), a few dozen phone photos. More go as an upload: the files zipped into a temporary
file and streamed (``FerryClient.upload``), the job naming the upload, as ``ferry upload`` then
``ferry job --manifest`` would. The zip's names are the files' paths below the folder they share, so
the job's results name each photo by its file.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

#: Image files a job sends inline, in all, at most: the edge refuses a CreateJob body past
#: 32 MiB, and the request's framing needs some room.
INLINE_JOB_BYTES = 24 * 1024 * 1024


def too_large_inline(files: Sequence[Path]) -> bool:
    """Whether ``files`` together are more than a CreateJob request can carry."""
    return sum(f.stat().st_size for f in files) > INLINE_JOB_BYTES


def zip_names(files: Sequence[Path]) -> list[tuple[Path, str]]:
    """Each distinct file (in the order given, repeats dropped) with its name in the zip: its path
    below the folder the files share, with forward slashes."""
    unique = list(dict.fromkeys(f.resolve() for f in files))
    shared = Path(os.path.commonpath([f.parent for f in unique]))
    return [(f, f.relative_to(shared).as_posix()) for f in unique]


def write_zip(files: Sequence[Path], into: Path) -> int:
    """Writes ``files`` into the zip ``into``, stored (photos do not pack); returns their count."""
    named = zip_names(files)
    with zipfile.ZipFile(into, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for path, name in named:
            archive.write(path, name)
    return len(named)
