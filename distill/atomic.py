"""Files that appear whole: written beside their place under a name of this process's own,
then renamed over it, so a reader (or another process writing the same file, as processes
sharing a sweep folder do) sees one whole version or another, never half of one.

Checkpoints need more (an fsync, test hooks that kill mid-save): see ``distill.checkpoint``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path


def write_whole(path: Path, write: Callable[[Path], None], hidden: bool = False) -> None:
    """``write(tmp)`` fills a temporary file beside ``path``, which then replaces ``path``.

    The temporary file is removed if ``write`` or the rename fails (the error propagates).
    ``hidden``: a dot-name for the temporary file, for folders that are listed (caches).
    """
    tmp = path.with_name(f"{'.' if hidden else ''}{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
