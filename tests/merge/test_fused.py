"""The fused SLERP kernel must give exactly what the torch path (and so mergekit) gives."""

import ctypes
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from evomerge.cli import app
from evomerge.merge import fused, methods
from evomerge.toy.tiny import make_family

REPO = Path(__file__).resolve().parents[2]


def torch_path(a, b, c0, c1):
    out = torch.empty_like(a)
    methods.weighted_pair_into(out, a, b, c0, c1, methods.ChunkScratch())
    return out


@pytest.mark.skipif(fused.load_kernel() is None, reason="no C compiler on this machine")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_is_bitwise_the_torch_path(dtype):
    generator = torch.Generator().manual_seed(0)
    # Sizes straddle the kernel's threading threshold and split points between threads.
    sizes = [1, 7, 4096, 300_001, 1 << 18, 65_537]
    firsts = [torch.randn(n, generator=generator).to(dtype) for n in sizes]
    seconds = [torch.randn(n, generator=generator).to(dtype) for n in sizes]
    firsts[2][:4] = torch.tensor([float("nan"), float("inf"), -0.0, 1e-40])
    coefficients = [(0.3, 0.7), (1.0, 0.0), (0.61, 0.47), (-0.2, 1.3), (0.5, 0.5), (1e-3, 0.999)]
    outs = [torch.empty_like(a) for a in firsts]
    assert fused.weighted_pairs(outs, firsts, seconds, [c[0] for c in coefficients], [c[1] for c in coefficients])
    for out, a, b, (c0, c1) in zip(outs, firsts, seconds, coefficients):
        expected = torch_path(a, b, c0, c1)
        assert torch.equal(out.isnan(), expected.isnan())
        assert torch.equal(out.nan_to_num(), expected.nan_to_num())


def test_tensors_the_kernel_cannot_take_are_left_to_torch():
    a = torch.randn(8, 8)
    half = a.half()
    assert not fused.weighted_pairs([torch.empty_like(half)], [half], [half], [0.5], [0.5])
    strided = a.t()
    out = torch.zeros(8, 8)
    assert not fused.weighted_pairs([out], [strided], [strided], [0.5], [0.5])
    assert torch.equal(out, torch.zeros(8, 8)), "a refused call writes nothing"


@pytest.mark.skipif(fused.load_kernel() is None, reason="no C compiler on this machine")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_planned_call_is_reused_with_new_coefficients(dtype):
    """The engine builds the kernel's arguments once per parent pair; each trial passes only
    float32 coefficient vectors, and each call equals the torch path for its coefficients."""
    generator = torch.Generator().manual_seed(1)
    sizes = [5, 70_000, 300_001]
    firsts = [torch.randn(n, generator=generator).to(dtype) for n in sizes]
    seconds = [torch.randn(n, generator=generator).to(dtype) for n in sizes]
    outs = [torch.empty_like(a) for a in firsts]
    pairs = fused.plan_weighted_pairs(outs, firsts, seconds)
    assert pairs is not None and pairs.count == 3
    for c0, c1 in [([0.3, 0.61, -0.2], [0.7, 0.47, 1.3]), ([1.0, 0.0, 0.5], [0.0, 1.0, 0.5])]:
        pairs(torch.tensor(c0, dtype=torch.float32), torch.tensor(c1, dtype=torch.float32))
        for out, a, b, x, y in zip(outs, firsts, seconds, c0, c1):
            assert torch.equal(out, torch_path(a, b, float(torch.tensor(x)), float(torch.tensor(y))))
    with pytest.raises(ValueError, match="float32"):
        pairs(torch.zeros(3, dtype=torch.float64), torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="expected 3 coefficients, got 2"):
        pairs(torch.zeros(2), torch.zeros(2))


def test_a_plan_refuses_what_the_kernel_cannot_take():
    a = torch.randn(8, 8)
    assert fused.plan_weighted_pairs([a.half()], [a.half()], [a.half()]) is None
    assert fused.plan_weighted_pairs([torch.empty(8, 8)], [a.t()], [a.t()]) is None
    assert fused.plan_weighted_pairs([torch.empty(8, 8)], [a], [a.bfloat16()]) is None


# ----- every way the kernel can be unavailable falls back to torch, with one warning -----------------

KERNEL_LOG = "evomerge.merge.fused"


@pytest.fixture
def fresh_kernel(monkeypatch, tmp_path):
    """load_kernel() as on a machine seen for the first time: an empty cache of its own, and the
    process-wide memo cleared before and after."""
    monkeypatch.setenv("EVOMERGE_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("EVOMERGE_NO_KERNEL", raising=False)
    fused.load_kernel.cache_clear()
    yield tmp_path / "cache" / "kernels"
    fused.load_kernel.cache_clear()


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == KERNEL_LOG and r.levelname == "WARNING"]


def assert_falls_back(caplog, *words):
    """None, exactly one warning naming the cause and the torch fallback, and still None (and no
    second warning) when asked again, while merging through weighted_pairs still works."""
    with caplog.at_level("INFO", logger=KERNEL_LOG):
        assert fused.load_kernel() is None
        assert fused.load_kernel() is None
        a, b = torch.randn(1000), torch.randn(1000)
        out = torch.empty(1000)
        assert not fused.weighted_pairs([out], [a], [b], [0.3], [0.7])  # the caller takes the torch path
    messages = warnings_of(caplog)
    assert len(messages) == 1, messages
    assert "torch ops" in messages[0]
    for word in words:
        assert word in messages[0]


def corrupt(library, content: bytes) -> None:
    """A new file with other bytes where the library was (as a crash half-way through writing it,
    or a full disk, leaves it); not written in place, which would break this process's own copy."""
    library.unlink()
    library.write_bytes(content)


needs_compiler = pytest.mark.skipif(fused.find_compiler() is None or platform.system() != "Linux", reason="needs a C compiler on Linux")


def test_no_compiler(fresh_kernel, monkeypatch, caplog):
    monkeypatch.setattr(fused, "find_compiler", lambda: None)
    assert_falls_back(caplog, "no C compiler")


@pytest.mark.parametrize("system", ["Darwin", "Windows"])
def test_not_linux(fresh_kernel, monkeypatch, caplog, system):
    monkeypatch.setattr(fused.platform, "system", lambda: system)
    assert_falls_back(caplog, f"not {system}")
    assert not fresh_kernel.exists(), "nothing is compiled"


@needs_compiler
def test_a_compiler_that_fails(fresh_kernel, monkeypatch, caplog):
    broken = fresh_kernel.parent.parent / "broken-cc"
    broken.parent.mkdir(parents=True, exist_ok=True)
    broken.write_text("#!/bin/sh\necho 'cc: internal error' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setattr(fused, "find_compiler", lambda: str(broken))
    assert_falls_back(caplog, "could not compile", "internal error")


def run_python(code: str, cache: Path) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter (a library this process has loaded would be reused by the
    dynamic loader whatever the file now holds), with the given kernel cache."""
    env = {**os.environ, "EVOMERGE_CACHE": str(cache), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    env.pop("EVOMERGE_NO_KERNEL", None)
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


@needs_compiler
def test_a_corrupted_cached_library_is_rebuilt(fresh_kernel):
    assert fused.load_kernel() is not None
    (library,) = fresh_kernel.glob("*.so")
    corrupt(library, b"\x7fELF but not really a library")
    code = "import logging; logging.basicConfig(level=logging.INFO)\nfrom evomerge.merge import fused\nprint('kernel', fused.load_kernel() is not None)"
    result = run_python(code, fresh_kernel.parent)
    assert "kernel True" in result.stdout, result.stderr
    assert "rebuilding" in result.stderr and "WARNING" not in result.stderr
    assert library.read_bytes()[:4] == b"\x7fELF" and library.stat().st_size > 1000


@needs_compiler
def test_a_corrupted_cache_that_cannot_be_rebuilt_warns_once_and_merges_correctly(fresh_kernel, tmp_path):
    """The issue's case: a corrupted cached library that cannot be rebuilt (the compiler fails),
    through `evomerge merge`: one warning, no traceback, and the same tensors as with the kernel."""
    family = make_family(tmp_path / "parents", "llama", children=("child",), noise=0.3, dtype=torch.bfloat16, tie_word_embeddings=False)
    renames = ["--parent", f"./instruct={family['base']}", "--parent", f"./fine-tuned={family['child']}"]
    with_kernel = tmp_path / "with-kernel"
    assert fused.load_kernel() is not None
    assert CliRunner().invoke(app, ["merge", "paper_slerp", "--out", str(with_kernel), "--device", "cpu", *renames]).exit_code == 0
    (library,) = fresh_kernel.glob("*.so")
    corrupt(library, b"garbage")
    broken = tmp_path / "broken-cc"
    broken.write_text("#!/bin/sh\necho 'cc: cannot run' >&2\nexit 1\n")
    broken.chmod(0o755)
    without = tmp_path / "without-kernel"
    code = (
        "from evomerge.merge import fused\n"
        f"fused.find_compiler = lambda: {str(broken)!r}\n"
        f"fused.cache_key = lambda compiler: {library.stem.split('-')[1]!r}  # the corrupted file's key\n"
        "from evomerge.cli import app\n"
        f"app({['merge', 'paper_slerp', '--out', str(without), '--device', 'cpu', *renames]!r}, prog_name='evomerge')\n"
    )
    result = run_python(code, fresh_kernel.parent)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("fused merge kernel is unavailable") == 1, result.stderr
    assert "does not load" in result.stderr and "could not compile" in result.stderr and "Traceback" not in result.stderr
    ours, theirs = load_file(with_kernel / "model.safetensors"), load_file(without / "model.safetensors")
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


@needs_compiler
def test_a_library_for_a_foreign_c_library(fresh_kernel, monkeypatch, caplog):
    """A library built against a newer glibc (a shared home folder on an older node) does not load;
    it is rebuilt, and if that does not load either, torch takes over with one warning."""
    real = ctypes.CDLL

    def foreign(path, *args, **kwargs):
        if str(path).startswith(str(fresh_kernel)):
            raise OSError(f"/lib/x86_64-linux-gnu/libc.so.6: version `GLIBC_2.99' not found (required by {path})")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(fused.ctypes, "CDLL", foreign)
    assert_falls_back(caplog, "does not load", "GLIBC_2.99")


@needs_compiler
def test_a_library_that_computes_wrong_results_is_not_used(fresh_kernel, monkeypatch, caplog):
    source = fresh_kernel.parent / "wrong.c"
    source.parent.mkdir(parents=True, exist_ok=True)
    source.write_text(fused.SOURCE.read_text().replace("o[i] = x + y;", "o[i] = x - y;"))
    monkeypatch.setattr(fused, "SOURCE", source)
    assert_falls_back(caplog, "wrong results")


def test_an_unwritable_cache_builds_in_a_temporary_folder(fresh_kernel, monkeypatch, caplog):
    if fused.find_compiler() is None or platform.system() != "Linux":
        pytest.skip("needs a C compiler on Linux")
    fresh_kernel.parent.mkdir(parents=True)
    fresh_kernel.write_text("a file where the cache folder should be")
    with caplog.at_level("INFO", logger=KERNEL_LOG):
        assert fused.load_kernel() is not None
    assert not warnings_of(caplog)


def test_switched_off_without_a_warning(fresh_kernel, monkeypatch, caplog):
    monkeypatch.setenv("EVOMERGE_NO_KERNEL", "1")
    with caplog.at_level("INFO", logger=KERNEL_LOG):
        assert fused.load_kernel() is None
    assert not warnings_of(caplog)


def test_the_cache_key_names_os_machine_libc_and_compiler(monkeypatch):
    compiler = fused.find_compiler() or "/usr/bin/cc"
    monkeypatch.setattr(fused, "compiler_identity", lambda c: "gcc (Debian 14.2.0-19) 14.2.0")
    key = fused.cache_key(compiler)
    variations = {
        "system": lambda: "Darwin",
        "machine": lambda: "aarch64",
        "libc_ver": lambda: ("glibc", "2.17"),
    }
    for name, value in variations.items():
        with monkeypatch.context() as patch:
            patch.setattr(fused.platform, name, value)
            assert fused.cache_key(compiler) != key, name
    monkeypatch.setattr(fused, "compiler_identity", lambda c: "clang version 19.1.7")
    assert fused.cache_key(compiler) != key
