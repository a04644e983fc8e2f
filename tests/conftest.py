"""Shared fixtures: tiny model families built once per session, and mergekit-yaml as the oracle.

Nothing here downloads anything: the environment is set offline before transformers is imported,
and every checkpoint is made locally by `evomerge.toy.tiny`.
"""

from __future__ import annotations

import os
import tempfile

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["TOKENIZERS_PARALLELISM"] = "false"
# hypothesis keeps a cache of constants; keep it out of the repository.
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(tempfile.gettempdir(), "evomerge-hypothesis"))

from pathlib import Path

import pytest
from hypothesis import settings

# No example database written into the repository; examples are drawn from fixed seeds per test.
settings.register_profile("evomerge", database=None, deadline=None, derandomize=True)
settings.load_profile("evomerge")

from evomerge.toy.tiny import make_family
from oracle import TORCH_DTYPES

@pytest.fixture(scope="session")
def family(tmp_path_factory):
    """`family(arch, dtype, noise=0.3)` → {"base", "c1", "c2": folder}; each family is built once.

    noise=0.3 gives children far enough from the base for SLERP's angle to matter; noise=1e-4 gives
    children so close to the base that mergekit's SLERP falls back to lerp (|dot| > 0.9995).
    """
    cache: dict[tuple, dict[str, Path]] = {}

    def build(arch: str = "llama", dtype: str = "float32", noise: float = 0.3, **config_kwargs) -> dict[str, Path]:
        key = (arch, dtype, noise, tuple(sorted(config_kwargs.items())))
        if key not in cache:
            root = tmp_path_factory.mktemp(f"family-{arch}-{dtype}-{noise:g}")
            cache[key] = make_family(
                root, arch, children=("c1", "c2"), noise=noise, seed=0, dtype=TORCH_DTYPES[dtype], **config_kwargs
            )
        return cache[key]

    return build


# ----- slow tests ----------------------------------------------------------------------------------
# `pytest -m "not slow"` is the quick run (under 5 minutes on 2 cores); CI runs everything. Tests
# are marked slow here, by node-id prefix, when they take more than a few seconds on the 2-core CI
# machine (measured with `pytest --durations=0`), besides those marked `@pytest.mark.slow` in place.
SLOW = (
)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid.startswith(SLOW):
            item.add_marker(pytest.mark.slow)
