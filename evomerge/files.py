"""Small file helpers shared by every layer: all-or-nothing output folders, JSONL records."""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Union

from evomerge.errors import EvomergeError

# Written by `evomerge train` beside a model; read wherever a parent's history is shown.
LINEAGE_FILE = "evomerge_lineage.json"


@contextlib.contextmanager
def staged_folder(out: Path) -> Iterator[Path]:
    """A temporary folder beside `out` that replaces `out` only if the block finishes, so a failed
    or interrupted write leaves nothing half-written."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield staging
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


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
    path = Path(path)
    path.write_text("".join(json.dumps(record, ensure_ascii=ensure_ascii) + "\n" for record in records), encoding="utf-8")
    return path
