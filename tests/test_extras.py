"""A feature whose optional dependencies are missing says which extra to install, in one line."""

import importlib.util

import pytest
from typer.testing import CliRunner

from evomerge import extras
from evomerge.cli import app
from evomerge.search.study import open_storage

runner = CliRunner()


@pytest.fixture
def without(monkeypatch):
    """Make the given top-level modules look uninstalled to `require`."""
    hidden = set()
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name.split(".")[0] in hidden else real(name, *args, **kwargs)

    monkeypatch.setattr(extras.importlib.util, "find_spec", find_spec)
    return hidden.update


def test_every_optional_module_names_an_extra_of_pyproject():
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    declared = set(pyproject["project"]["optional-dependencies"])
    assert set(extras.EXTRAS.values()) <= declared
    assert {"ray", "train", "lm-eval", "postgres", "dashboard", "all"} <= declared


def test_a_missing_extra_is_one_line_naming_the_install(without):
    without({"trl"})
    with pytest.raises(extras.MissingExtra) as caught:
        extras.require("trl", "evomerge train")
    assert str(caught.value) == "evomerge train needs the 'train' extra: pip install 'evomerge[train]'"


def test_train_without_trl(without, tmp_path):
    without({"trl"})
    data = tmp_path / "sft.jsonl"
    data.write_text('{"prompt": "a", "completion": "b"}\n')
    result = runner.invoke(app, ["train", "--strategy", "sft", "--model", str(tmp_path), "--data", str(data), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2
    assert "pip install 'evomerge[train]'" in result.output and "Traceback" not in result.output


def test_dashboard_without_optuna_dashboard(without, tmp_path):
    without({"optuna_dashboard"})
    result = runner.invoke(app, ["dashboard", "--storage", f"sqlite:///{tmp_path}/none.db"])
    assert result.exit_code == 2 and "pip install 'evomerge[dashboard]'" in result.output


def test_postgres_storage_without_psycopg2(without):
    without({"psycopg2"})
    with pytest.raises(extras.MissingExtra, match=r"pip install 'evomerge\[postgres\]'"):
        open_storage("postgresql://user@localhost:1/none")


def test_lm_eval_task_without_lm_eval(without):
    from evomerge.evaluate import harness

    without({"lm_eval"})
    harness._task_manager.cache_clear()
    with pytest.raises(extras.MissingExtra, match=r"pip install 'evomerge\[lm-eval\]'"):
        harness.find_task("lm-eval:arc_easy")
    harness._task_manager.cache_clear()


def test_ray_backend_without_ray(without, monkeypatch):
    import sys

    without({"ray"})
    monkeypatch.delitem(sys.modules, "evomerge.search.ray_tune", raising=False)
    with pytest.raises(extras.MissingExtra, match=r"pip install 'evomerge\[ray\]'"):
        import evomerge.search.ray_tune  # noqa: F401
