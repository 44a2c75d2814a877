"""Publishing artifacts atomically: write under a temporary name beside the target, then rename.

A crash or an error mid-write leaves the previous artifact exactly as it was; readers never see half a file. A
directory replaces only an earlier artifact of its own kind, never anything else, nor the inputs it was made from.
"""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterable, Iterator


class OutputError(ValueError):
    """An output path whose writing would destroy something: an input, or what is not an earlier output."""


@contextmanager
def publish_dir(final: str | Path, replaces: Callable[[Path], bool] = lambda existing: False,
                inputs: Iterable[str | Path] = ()) -> Iterator[Path]:
    """Yield an empty temporary directory; on success it replaces `final`, on error it is removed.

    Refused before anything is written (OutputError): a `final` that exists and that `replaces` does not recognise as
    an earlier output, and a `final` that is, holds or lies inside one of `inputs`.
    """
    final = Path(final)
    _check_output(final, replaces, inputs)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    tmp.chmod(0o777 & ~_umask())  # mkdtemp makes it private; the artifact gets the usual permissions
    old = None
    if final.exists():  # move the old one aside first: os.rename cannot replace a non-empty directory
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        os.rename(final, old)
    os.rename(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _check_output(final: Path, replaces: Callable[[Path], bool], inputs: Iterable[str | Path]) -> None:
    target = final.resolve()
    for source in inputs:
        source = Path(source).resolve()
        if target == source or target in source.parents or source in target.parents:
            raise OutputError(f"{final} is, holds or lies inside the input {source}: write the output elsewhere")
    if final.exists() and not replaces(final):
        raise OutputError(f"{final} already exists and is not an earlier output of this command: choose another "
                          "place or remove it")


def publish_text(final: str | Path, text: str) -> None:
    """Write a text file atomically (os.replace is atomic within one filesystem)."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.tmp-", dir=final.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it private; the file gets the usual permissions
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
