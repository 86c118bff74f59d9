"""Image files of a job bundled into one zip, for jobs too large to send inline, and folders.

CreateJob carries its inputs in one request, which the edge limits to 32 MiB (``UPLOAD_REQUEST_BYTES``
on the server), a few dozen phone photos. More go as an upload: the files zipped into a temporary
file and streamed (``FerryClient.upload``), the job naming the upload, as ``ferry upload`` then
``ferry job --manifest`` would. So does a folder, whatever its size: the server leaves out the
bookkeeping files an OS keeps in folders (``.DS_Store``, ``Thumbs.db``) as it does in any zip.
The zip's names are the files' paths below the folder they share, so the job's results name each
photo by its file.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Sequence
from pathlib import Path

#: Image files a job sends inline, in all, at most: the edge refuses a CreateJob body past
#: 32 MiB, and the request's framing needs some room.
INLINE_JOB_BYTES = 24 * 1024 * 1024


def goes_as_upload(paths: Sequence[Path]) -> bool:
    """Whether a job of ``paths`` goes as one zip upload: a folder is among them, or the files
    together are more than a CreateJob request can carry."""
    return any(p.is_dir() for p in paths) or sum(p.stat().st_size for p in paths) > INLINE_JOB_BYTES


def files_of(paths: Sequence[Path]) -> list[Path]:
    """The files ``paths`` name: a file itself, a folder every file below it, in name order."""
    found: list[Path] = []
    for path in paths:
        found.extend(sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path])
    return found


def zip_names(paths: Sequence[Path]) -> list[tuple[Path, str]]:
    """Each distinct file of ``paths`` (``files_of``: in the order given, repeats dropped) with its
    name in the zip: its path below the folder the files share, with forward slashes."""
    unique = list(dict.fromkeys(f.resolve() for f in files_of(paths)))
    if not unique:
        raise ValueError(f"no files in {', '.join(map(str, paths))}")
    shared = Path(os.path.commonpath([f.parent for f in unique]))
    return [(f, f.relative_to(shared).as_posix()) for f in unique]


def write_zip(paths: Sequence[Path], into: Path) -> int:
    """Writes the files of ``paths`` into the zip ``into``, stored (photos do not pack); returns
    their count."""
    named = zip_names(paths)
    with zipfile.ZipFile(into, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for path, name in named:
            archive.write(path, name)
    return len(named)
