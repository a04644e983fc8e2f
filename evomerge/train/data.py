"""Training data: local JSONL files, validated for the strategy before any training starts.

cpt        {"text": …}
sft        {"messages": [{"role", "content"}, …]}  or  {"prompt": …, "completion": …}
dpo, orpo  {"prompt": …, "chosen": …, "rejected": …}
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Union

from evomerge.errors import EvomergeError
from evomerge.files import jsonl_objects

STRATEGIES = ("cpt", "sft", "dpo", "orpo")
FIELDS = {
    "cpt": [("text",)],
    "sft": [("messages",), ("prompt", "completion")],
    "dpo": [("prompt", "chosen", "rejected")],
    "orpo": [("prompt", "chosen", "rejected")],
}


class DataError(EvomergeError):
    """A training data file that does not fit its strategy; the message names the file and line."""


def load_records(path: Union[str, Path], strategy: str) -> list[dict]:
    """The file's records, each checked to have the strategy's fields (all in one shape)."""
    if strategy not in STRATEGIES:
        raise DataError(f"unknown strategy {strategy!r}; choose from {', '.join(STRATEGIES)}")
    path = Path(path)
    if not path.is_file():
        raise DataError(f"training data not found: {path}")
    records, shape = [], None
    for number, record in jsonl_objects(path, DataError):
        matching = [fields for fields in FIELDS[strategy] if all(_present(record.get(f)) for f in fields)]
        if not matching:
            wanted = " or ".join("{" + ", ".join(fields) + "}" for fields in FIELDS[strategy])
            raise DataError(f"{path}:{number}: {strategy} data needs {wanted}; this record has {sorted(record)}")
        if shape is None:
            shape = matching[0]
        elif matching[0] != shape:
            raise DataError(f"{path}:{number}: mixes {list(matching[0])} with {list(shape)} records")
        if "messages" in shape:
            _check_messages(record["messages"], f"{path}:{number}")
        else:
            for field_name in shape:
                if not isinstance(record[field_name], str):
                    raise DataError(f"{path}:{number}: '{field_name}' must be text, got {type(record[field_name]).__name__}")
        records.append({field: record[field] for field in shape})
    if not records:
        raise DataError(f"{path}: no records (empty training data file)")
    return records


def file_hash(path: Union[str, Path]) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _present(value) -> bool:
    return value is not None and value != "" and value != []


def _check_messages(messages, where: str) -> None:
    if not isinstance(messages, list) or not all(
        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str) for m in messages
    ):
        raise DataError(f"{where}: 'messages' must be a list of {{role, content}} objects")
