"""A pipeline's files: its input files (those named, and those of the wanted types under each directory), and the
manifest by which it recognises an earlier output of its own."""
from __future__ import annotations

import json
from pathlib import Path

from l2m_train.data import DataError


def find_files(paths: list[str], suffixes: tuple[str, ...], what: str) -> list[Path]:
    """In a stable order; `what` names the input in errors ("input", "haystack")."""
    files = []
    for name in paths:
        path = Path(name)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.suffix in suffixes and p.is_file())
            if not found:
                raise DataError(f"{what} directory {path} holds no {', '.join(suffixes)} files")
            files += found
        elif path.is_file():
            if path.suffix not in suffixes:
                raise DataError(f"{what} file {path}: unsupported type (use {', '.join(suffixes)})")
            files.append(path)
        else:
            raise DataError(f"{what} path not found: {path}")
    return files


def manifest_of(directory: Path) -> dict:
    """The directory's manifest.json, or {} where there is none readable (a file, a directory of other things)."""
    try:
        manifest = json.loads((directory / "manifest.json").read_text())
    except (OSError, ValueError):
        return {}
    return manifest if isinstance(manifest, dict) else {}
