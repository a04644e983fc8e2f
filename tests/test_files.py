"""All-or-nothing outputs: staged folders and atomic files get the modes any new folder or file
gets under the user's umask, and a failure leaves neither a partial file nor a staging folder."""

import os
import stat

import pytest

from evomerge.files import atomic_path, staged_folder, write_text_atomic


@pytest.fixture
def umask_022():
    before = os.umask(0o022)
    yield
    os.umask(before)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_staged_folder_is_readable_by_others_as_mkdir_would_make_it(tmp_path, umask_022):
    with staged_folder(tmp_path / "model") as staging:
        (staging / "config.json").write_text("{}")
    assert mode(tmp_path / "model") == 0o755  # mergekit-yaml's folders too; mkdtemp alone gives 0700
    (tmp_path / "plain").mkdir()
    assert mode(tmp_path / "model") == mode(tmp_path / "plain")


def test_a_failed_staged_folder_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with staged_folder(tmp_path / "model") as staging:
            (staging / "half.safetensors").write_bytes(b"x" * 10)
            raise RuntimeError("disk full")
    assert list(tmp_path.iterdir()) == []


def test_an_atomic_file_replaces_the_old_one_only_when_complete(tmp_path, umask_022):
    target = tmp_path / "summary.json"
    write_text_atomic(target, "old")
    assert target.read_text() == "old" and mode(target) == 0o644
    with pytest.raises(OSError):
        with atomic_path(target) as partial:
            partial.write_text("half of the new")
            raise OSError(28, "No space left on device")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["summary.json"]
