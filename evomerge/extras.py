"""Optional features and the extra that installs each: one line to act on when one is missing.

The core (merge, evaluate, search with Optuna and SQLite) needs none of them. A feature checks
for its modules where it is used, so `import evomerge` and the commands that do not need it work
without them.
"""

from __future__ import annotations

import importlib.util

from evomerge.errors import EvomergeError

# The `pip install 'evomerge[EXTRA]'` that provides each optional module (pyproject.toml's extras).
EXTRAS = {
    "ray": "ray",
    "trl": "train",
    "datasets": "train",
    "lm_eval": "lm-eval",
    "psycopg2": "postgres",
    "optuna_dashboard": "dashboard",
}


class MissingExtra(EvomergeError):
    """A feature whose optional dependencies are not installed."""


def require(module: str, feature: str) -> None:
    """Raise MissingExtra, naming the extra to install, if `module` cannot be imported here."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a parent package missing, or a half-removed module
        found = False
    if not found:
        extra = EXTRAS[module]
        raise MissingExtra(f"{feature} needs the '{extra}' extra: pip install 'evomerge[{extra}]'")
