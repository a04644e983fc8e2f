"""`--backend optuna`: trials in this process with `study.optimize`, and `--jobs` − 1 more processes
on this machine joining the same study."""

from __future__ import annotations

from typing import Optional

from evomerge.errors import EvomergeError
from evomerge.search.executors.base import Executor, OnTrial, Say

# The Ray executor's options, each with the value that means "not given".
RAY_FLAGS = (
    ("ray_address", "--ray-address", None),
    ("gpus_per_trial", "--gpus-per-trial", None),
    ("cpus_per_trial", "--cpus-per-trial", 1.0),
    ("concurrent", "--concurrent", None),
)


class InProcessExecutor(Executor):
    name = "optuna"
    description = "Optuna in this process (and --jobs processes on this machine)"

    @classmethod
    def check_settings(cls, settings, jobs: int = 1) -> None:
        if jobs < 1:
            raise EvomergeError(f"--jobs must be at least 1, got {jobs}")
        given = [flag for key, flag, unset in RAY_FLAGS if getattr(settings, key) != unset]
        if given:
            raise EvomergeError(f"{given[0]} applies to --backend ray only")

    def run(self, prepared, *, timeout: Optional[float] = None, on_trial: Optional[OnTrial] = None, say: Optional[Say] = None):
        from evomerge.search.run import optimise

        # The extra worker processes start once the study is open (its parents scored).
        return optimise(prepared, timeout=timeout, on_trial=on_trial, workers=self.jobs - 1)
