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

from oracle import TORCH_DTYPES

from evomerge.toy.tiny import make_family


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
            cache[key] = make_family(root, arch, children=("c1", "c2"), noise=noise, seed=0, dtype=TORCH_DTYPES[dtype], **config_kwargs)
        return cache[key]

    return build


# ----- slow tests ----------------------------------------------------------------------------------
# `pytest -m "not slow"` is the quick run while working; CI runs everything. Besides the tests marked
# `@pytest.mark.slow` in place, a test is slow here when it trains a model (it uses one of the
# training fixtures below, or is listed), or took more than ~5 s in a `--durations` run on the
# shared 2-core machine: whole searches, processes killed and resumed, servers, the toy domain.
SLOW_FIXTURES = {"trained", "swapped", "chain", "lora_runs", "peft_merged"}
SLOW = (
    "tests/test_cli_toy.py::",  # the demo: trains the toy's xs parents
    "tests/toy/test_build.py::",  # builds toy parents
    "tests/test_cli_map.py::test_a_small_map_runs_end_to_end",
    "tests/search/test_scale_map.py::test_every_output_is_written",
    "tests/search/test_scale_map.py::test_same_seed_same_numbers",
    "tests/search/test_storage.py::test_kill_9_loses_nothing",
    "tests/search/test_storage.py::test_a_worker_joins_a_postgres_study",
    "tests/search/test_storage.py::test_two_workers_on_a_journal_file",
    "tests/search/test_storage.py::test_unreachable_postgres_fails_fast",
    "tests/search/test_objective.py::test_the_study_reaches_its_total",
    "tests/search/test_objective.py::test_gain_objective_values",
    "tests/search/test_objective.py::test_median_pruner_stops",
    "tests/search/test_objective.py::test_pruned_trials_record_only",
    "tests/search/test_objective.py::test_two_benchmarks_make",
    "tests/search/test_objective.py::test_a_failing_recipe_fails",
    "tests/search/test_objective.py::test_a_resumed_study_does_not",
    "tests/search/test_objective.py::test_five_failures_in_a_row",
    "tests/search/test_objective.py::test_an_identical_recipe_is_not",
    "tests/search/test_objective.py::test_grid_sampler_visits",
    "tests/search/test_dashboard.py::test_dashboard_serves_the_study",
    "tests/search/test_locks.py::test_processes_proposing_one_recipe_at_once",
    "tests/search/test_export.py::test_a_two_benchmark_study_writes",
    "tests/search/test_export.py::test_the_study_lives_in_its_results_folder",
    "tests/test_cli_search.py::test_search_runs_end_to_end",
    "tests/test_cli_terminal.py::test_a_signal_stops_a_search",
    "tests/test_bad_input.py::test_bad_input_is_one_clean_line_and_leaves_nothing[eval-unknown-lm-eval-task]",
    "tests/evaluate/test_harness.py::test_unknown_task_is_a_clear_error",
    "tests/merge/test_fused.py::test_a_corrupted_cache_that_cannot_be_rebuilt",
    # training
    "tests/train/test_trainers.py::test_cpt_packs_short_texts_into_blocks",
    "tests/train/test_trainers.py::test_a_given_label_names_the_stage",
    "tests/train/test_trainers.py::test_explicit_beta_is_recorded",
    "tests/train/test_trainers.py::test_overwrite_replaces_an_existing_output",
    "tests/train/test_trainers.py::test_an_existing_empty_output_folder_is_fine",
    "tests/train/test_trainers.py::test_lora_options_are_used",
    "tests/train/test_trainers.py::test_messages_on_a_model_without_a_chat_template",
    "tests/train/test_trainers.py::test_chat_template_flag_takes",
    "tests/train/test_pipeline.py::test_model_and_out_overrides",
    "tests/train/test_pipeline.py::test_relative_paths_are_read",
    "tests/train/test_pipeline.py::test_a_lora_stage_merged_can_be_trained_on",
    "tests/train/test_pipeline.py::test_a_last_lora_stage_may_stay_an_adapter",
    "tests/train/test_pipeline.py::test_small_cpu_pipeline_runs",
    "tests/test_cli_train.py::test_one_stage",
    "tests/test_cli_train.py::test_lora_adapter",
    "tests/test_cli_train.py::test_lora_merged",
    "tests/test_cli_train.py::test_overwrite",
    "tests/test_cli_train.py::test_pipeline_keeps_both_checkpoints",
)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid.startswith(SLOW) or SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
