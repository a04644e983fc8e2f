"""Small file helpers shared by every layer: all-or-nothing output folders, JSONL records."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Sequence, Union

from evomerge.errors import EvomergeError

# Written by `evomerge train` beside a model; read wherever a parent's history is shown.
LINEAGE_FILE = "evomerge_lineage.json"


@contextlib.contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """A temporary folder beside `out` that replaces `out` only if the block finishes, so a failed
    or interrupted write leaves nothing half-written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    staging.chmod(new_folder_mode())  # mkdtemp makes it private (0700); the result is an ordinary folder
    try:
        yield staging
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def atomic_path(path: Union[str, Path]) -> Iterator[Path]:
    """A temporary file beside `path` (same suffix) to write into; it replaces `path` only if the
    block finishes, so a full disk or an interrupt never leaves a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        temporary.chmod(0o666 & new_folder_mode())  # mkstemp makes it private; the result is an ordinary file
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text_atomic(path: Union[str, Path], text: str) -> Path:
    """`path.write_text(text)` (UTF-8), all or nothing."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


def new_folder_mode() -> int:
    """The mode `mkdir` gives a new folder under the user's umask (0755 under the usual 022)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o777 & ~mask


def jsonl_objects(path: Path, error: type[EvomergeError], what: str = "a record") -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line; `error` names the file and line otherwise."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as problem:
        raise error(f"{path}: not UTF-8 text ({problem.reason})") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
        except json.JSONDecodeError as problem:
            raise error(f"{path}:{number}: not valid JSON ({problem.msg})") from None
        if not isinstance(data, dict):
            raise error(f"{path}:{number}: {what} must be a JSON object")
        yield number, data


def write_jsonl(path: Union[str, Path], records: Iterable[dict], *, ensure_ascii: bool = False) -> Path:
    """One JSON object per line, UTF-8 (non-ASCII text as it is unless `ensure_ascii`)."""
    return write_text_atomic(path, "".join(json.dumps(record, ensure_ascii=ensure_ascii) + "\n" for record in records))


def parent_labels(parents: Sequence[str]) -> dict[str, str]:
    """A short name per parent for tables: its folder's name, else the label its lineage records
    (`evomerge train`'s, e.g. "instruct-CPT-SFT"), else the path as given, whichever tells the
    parents apart first."""

    def lineage_label(parent: str) -> str:
        try:
            return str(json.loads((Path(parent) / LINEAGE_FILE).read_text(encoding="utf-8")).get("label") or "")
        except (OSError, ValueError, AttributeError):
            return ""

    candidates = (
        {parent: Path(str(parent).rstrip("/")).name for parent in parents},
        {parent: lineage_label(parent) for parent in parents},
    )
    for names in candidates:
        if all(names.values()) and len(set(names.values())) == len(names):
            return names
    return {parent: str(parent) for parent in parents}
