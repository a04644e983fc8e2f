"""A short cross-process lock per study, for the few steps that must be atomic across workers.

Optuna's storages make each write atomic, but not a read followed by a write: two workers that
both check "has anyone evaluated this recipe?" and then both claim it would evaluate it twice, and
two processes opening a study could both queue the paper's recipe. Those steps run under
`study_lock`, held for milliseconds. Where the lock lives follows the storage:

- SQLite and journal files: an `flock` on a file beside the storage (released by the kernel if the
  process dies), so every process on the machines that share that file takes the same lock;
- PostgreSQL: a session-level advisory lock (released when the connection closes, so also when a
  worker is killed); MySQL: `GET_LOCK`;
- anything else (an in-memory SQLite, say): a lock within this process only, which is all such a
  storage can be shared by.
"""

from __future__ import annotations

import hashlib
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

_thread_locks: dict[str, threading.Lock] = {}
_guard = threading.Lock()


def _lock_id(storage_url: str, study: str) -> str:
    return f"{storage_url}#{study}"


def _thread_lock(lock_id: str) -> threading.Lock:
    with _guard:
        return _thread_locks.setdefault(lock_id, threading.Lock())


def _storage_file(storage_url: str) -> Path | None:
    """The file a SQLite or journal storage lives in (None for servers and in-memory SQLite)."""
    if storage_url.startswith("journal:"):
        return Path(storage_url.split(":", 1)[1].removeprefix("//"))
    if storage_url.startswith("sqlite:///") and storage_url != "sqlite:///:memory:":
        return Path(storage_url[len("sqlite:///") :])
    return None


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    try:
        import fcntl
    except ImportError:  # not on a POSIX system: the in-process lock is all there is
        yield
        return
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


@contextmanager
def _server_lock(storage_url: str, lock_id: str) -> Iterator[None]:
    import sqlalchemy
    from sqlalchemy.pool import NullPool

    key = int.from_bytes(hashlib.sha256(lock_id.encode()).digest()[:8], "big", signed=True)
    engine = sqlalchemy.create_engine(storage_url, poolclass=NullPool)
    try:
        with engine.connect() as connection:
            if engine.dialect.name == "postgresql":
                take, give = "SELECT pg_advisory_lock(:key)", "SELECT pg_advisory_unlock(:key)"
            else:  # mysql, mariadb
                take, give = "SELECT GET_LOCK(CAST(:key AS CHAR), -1)", "SELECT RELEASE_LOCK(CAST(:key AS CHAR))"
            connection.execute(sqlalchemy.text(take), {"key": key})
            try:
                yield
            finally:
                connection.execute(sqlalchemy.text(give), {"key": key})
    finally:
        engine.dispose()


def _is_server(storage_url: str) -> bool:
    scheme = storage_url.split(":", 1)[0].split("+", 1)[0]
    return scheme in ("postgresql", "postgres", "mysql", "mariadb")


@contextmanager
def study_lock(storage_url: str, study: str) -> Iterator[None]:
    """Hold the study's lock: one holder at a time across threads, processes and, where the
    storage is shared, machines. Hold it only for a few storage reads and writes."""
    lock_id = _lock_id(storage_url, study)
    with _thread_lock(lock_id):
        path = _storage_file(storage_url)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            digest = hashlib.sha256(study.encode()).hexdigest()[:8]  # a file per study: one file may hold several
            with _file_lock(path.with_name(f".{path.name}.{digest}.evomerge-lock")):
                yield
        elif _is_server(storage_url):
            with _server_lock(storage_url, lock_id):
                yield
        else:
            yield
