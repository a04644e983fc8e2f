"""mergekit-yaml as the oracle, and tensor comparisons, shared by the merge tests."""

import json
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

ARCHS = ("llama", "mistral", "qwen2", "gemma")
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
MERGEKIT_YAML = Path(sys.executable).parent / "mergekit-yaml"
MERGE_SEED = 7


# ----- mergekit-yaml as the oracle --------------------------------------------------------------

# Runs mergekit-yaml's own entry point (`mergekit.scripts.run_yaml.main`, what the `mergekit-yaml`
# console script calls) once per job inside ONE interpreter, with the same arguments as the
# command line. Each call re-applies `--random-seed`, so every job sees the state a fresh
# `mergekit-yaml --random-seed 7` process sees; `test_batched_oracle_equals_mergekit_yaml_binary`
# checks that against the real binary. This saves mergekit's ~7 s import per merge.
_DRIVER = r"""
import json, sys, traceback
from pathlib import Path
from mergekit.scripts.run_yaml import main
for config, out, seed in json.loads(sys.argv[1]):
    try:
        main([config, out, "--random-seed", str(seed), "--quiet"], standalone_mode=False)
    except BaseException:
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "MERGEKIT_ERROR.txt").write_text(traceback.format_exc())
"""


class MergekitBatch:
    """Runs mergekit-yaml on many (config, out) jobs in the background; `result(out)` waits."""

    def __init__(self, jobs: Sequence[tuple[Path, Path]], seed: int = MERGE_SEED):
        payload = json.dumps([[str(config), str(out), seed] for config, out in jobs])
        self._process = subprocess.Popen([sys.executable, "-c", _DRIVER, payload], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._log: Optional[str] = None

    def wait(self) -> str:
        if self._log is None:
            self._log, _ = self._process.communicate(timeout=600)
            if self._process.returncode != 0:
                raise AssertionError(f"mergekit-yaml driver failed:\n{self._log[-4000:]}")
        return self._log

    def result(self, out: Path) -> dict[str, torch.Tensor]:
        self.wait()
        return load_output(out)


def run_mergekit_yaml_binary(config: Path, out: Path, seed: int = MERGE_SEED) -> dict[str, torch.Tensor]:
    """The real `mergekit-yaml CONFIG OUT --random-seed SEED --quiet` in its own process."""
    done = subprocess.run(
        [str(MERGEKIT_YAML), str(config), str(out), "--random-seed", str(seed), "--quiet"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"mergekit-yaml failed on {config}:\n{done.stderr[-4000:]}"
    return load_output(out)


def load_output(out: Path) -> dict[str, torch.Tensor]:
    """All tensors of a merged model folder (single or sharded safetensors)."""
    from safetensors.torch import load_file

    error = out / "MERGEKIT_ERROR.txt"
    assert not error.exists(), f"mergekit-yaml failed for {out}:\n{error.read_text()[-4000:]}"
    files = sorted(out.glob("*.safetensors"))
    assert files, f"mergekit-yaml wrote no safetensors into {out}"
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        tensors.update(load_file(str(file)))
    return tensors


def bf16_step(reference: torch.Tensor) -> torch.Tensor:
    """The spacing of bfloat16 numbers at each element's magnitude (one rounding step)."""
    magnitude = reference.float().abs().clamp_min(torch.finfo(torch.bfloat16).tiny)
    return torch.exp2(torch.floor(torch.log2(magnitude)) - 7)


def assert_tensors_match(got: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], label: str) -> None:
    """Same names, shapes and dtypes, and bitwise equal values (with the size of any difference)."""
    assert set(got) == set(expected), (
        f"{label}: tensor names differ; only in engine: {sorted(set(got) - set(expected))}, only in mergekit: {sorted(set(expected) - set(got))}"
    )
    problems = []
    for name in sorted(expected):
        a, b = got[name].detach().cpu(), expected[name]
        assert a.shape == b.shape, f"{label}: {name} has shape {list(a.shape)}, mergekit {list(b.shape)}"
        assert a.dtype == b.dtype, f"{label}: {name} is {a.dtype}, mergekit wrote {b.dtype}"
        if torch.equal(a, b):
            continue
        diff = (a.double() - b.double()).abs()
        if b.dtype == torch.bfloat16:
            within = bool((diff <= bf16_step(b).double()).all())
            tolerance = "one bf16 step"
        else:
            within = diff.max().item() <= 1e-6
            tolerance = "1e-6"
        problems.append(
            f"{name}: max abs diff {diff.max().item():.3g}, {int((diff > 0).sum())}/{diff.numel()} elements differ, "
            f"{'within' if within else 'OUTSIDE'} {tolerance}"
        )
    assert not problems, f"{label}: engine differs from mergekit-yaml in {len(problems)} tensors:\n" + "\n".join(problems[:10])
