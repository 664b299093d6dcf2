"""Where a package will go, checked before the search: a bad destination fails in a second, not after the builds.

``write_package`` renames a finished folder into place at the very end. Everything that would stop it
there (a file in the way, an existing folder without overwrite, a parent that cannot be created or
written) is refused here first, by the CLI and the Python API alike.
"""

from __future__ import annotations

import os
from pathlib import Path

from inferforge.errors import PackageError
from inferforge.manifest import MANIFEST


def check_destination(out: Path, overwrite: bool) -> None:
    """Raise PackageError, saying what to do, when a package cannot be written to ``out``.

    ``out`` must be a folder that does not exist yet, or an inferforge package (or an empty folder) with
    ``overwrite``: a regular file is never replaced, nor a folder of other files, which replacing would
    delete. Its nearest existing ancestor must be a writable folder, where the package is staged.
    Creates nothing.
    """
    out = Path(out)
    if out.exists() or out.is_symlink():
        _check_existing(out, overwrite)
    _check_parent(out)


def _check_existing(out: Path, overwrite: bool) -> None:
    if not out.is_dir():
        raise PackageError(f"package destination {out} is a file, not a package folder: choose another --out "
                           "(a folder to create), or remove the file")
    if not overwrite:
        raise PackageError(f"{out} already exists: choose another --out or pass --overwrite")
    if not (out / MANIFEST).is_file() and any(out.iterdir()):
        raise PackageError(f"{out} is a folder of other files, not an inferforge package (it has no {MANIFEST}): "
                           "--overwrite replaces packages only, and would delete them; choose another --out")


def _check_parent(out: Path) -> None:
    """The nearest existing ancestor of ``out`` must be a folder this process may create entries in."""
    ancestor = out.absolute().parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise PackageError(f"cannot create package folder {out}: {ancestor} is a file, not a folder; "
                           "choose another --out")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise PackageError(f"cannot create package folder {out}: {ancestor} is not writable by this user; "
                           "choose another --out")
