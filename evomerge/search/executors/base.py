"""The executor's small base class (see the package's docstring)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional

if TYPE_CHECKING:
    import optuna

    from evomerge.search.run import Prepared
    from evomerge.search.study import SearchSettings

OnTrial = Callable[["optuna.Study", "optuna.trial.FrozenTrial"], None]
Say = Callable[[str], None]


class Executor:
    """Runs the trials of one search. The constructor stores the settings; nothing starts before `start`."""

    name = ""
    description = ""

    def __init__(self, settings: SearchSettings, jobs: int = 1):
        self.settings = settings
        self.jobs = jobs

    @classmethod
    def check_settings(cls, settings: SearchSettings, jobs: int = 1) -> None:
        """Refuse options that do not apply to this executor (an EvomergeError naming the flag)."""

    def start(self) -> None:
        """Preflight: after every input is checked, before the study's storage is opened."""

    def run(
        self, prepared: Prepared, *, timeout: Optional[float] = None, on_trial: Optional[OnTrial] = None, say: Optional[Say] = None
    ) -> tuple[optuna.Study, object]:
        """Open the study and run trials until it has its total; the study, and a runner that
        can score a recipe on the held-out items (`holdout_score`)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release what `start` took (idempotent)."""

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
