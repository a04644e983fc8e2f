"""`--backend ray`: trials on a Ray cluster (or a local Ray), one GPU each, in the same Optuna study;
the machinery is `search/ray_tune.py`, imported only when this executor starts."""

from __future__ import annotations

from typing import Optional

from evomerge.errors import EvomergeError
from evomerge.search.executors.base import Executor, OnTrial, Say


class RayExecutor(Executor):
    name = "ray"
    description = "Ray Tune on a cluster, one GPU per trial, ASHA stopping"

    def __init__(self, settings, jobs: int = 1):
        super().__init__(settings, jobs)
        self.session = None

    @classmethod
    def check_settings(cls, settings, jobs: int = 1) -> None:
        if settings.population > 1:
            raise EvomergeError("--population applies to --backend optuna only (a Ray trial holds one model; use --concurrent)")
        if jobs > 1:
            raise EvomergeError("--jobs starts Optuna worker processes on this machine; with --backend ray use --concurrent")
        if settings.gpus_per_trial is not None and settings.gpus_per_trial < 0:
            raise EvomergeError(f"--gpus-per-trial must be 0 or more, got {settings.gpus_per_trial:g}")
        if settings.cpus_per_trial <= 0:
            raise EvomergeError(f"--cpus-per-trial must be above 0, got {settings.cpus_per_trial:g}")
        if settings.concurrent is not None and settings.concurrent < 1:
            raise EvomergeError(f"--concurrent must be at least 1, got {settings.concurrent}")

    def start(self) -> None:
        """Start a local Ray or reach the cluster, and check the trials fit on it."""
        from evomerge.search.ray_tune import RaySession

        self.session = RaySession(self.settings)
        self.session.start()

    def run(self, prepared, *, timeout: Optional[float] = None, on_trial: Optional[OnTrial] = None, say: Optional[Say] = None):
        from evomerge.search.ray_tune import logger, optimise_on_ray

        return optimise_on_ray(prepared, self.session, timeout=timeout, on_trial=on_trial, log=say or logger.info)

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
