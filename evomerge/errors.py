"""User-facing errors: the CLI prints their message on one line and exits with code 2. And the
one way evomerge stops on a signal: Ctrl-C and SIGTERM both arrive as a KeyboardInterrupt."""

import signal
from contextlib import contextmanager
from typing import Iterator


class EvomergeError(Exception):
    """Bad input the user can fix (a path, a recipe, a flag). Raised before any work starts."""


class RecipeError(EvomergeError):
    """A recipe or parameter setting that mergekit would not accept or that is out of range."""


class ParentError(EvomergeError):
    """A parent checkpoint that is missing, corrupt, or incompatible with the others."""


def first_line(error: BaseException) -> str:
    """An exception's message cut to its first line (libraries' messages run to many), or its
    type's name when it has none: what a one-line error shows of a library's failure."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler or `kill` ending the job), handled exactly as Ctrl-C is."""


def interrupt_reason(interrupt: BaseException) -> str:
    """A failed trial's reason when a signal stopped it."""
    return "terminated (SIGTERM)" if isinstance(interrupt, Terminated) else "interrupted (Ctrl-C)"


def interrupt_exit_code(interrupt: BaseException) -> int:
    """The shell's convention: 128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM)."""
    return 128 + (signal.SIGTERM if isinstance(interrupt, Terminated) else signal.SIGINT)


def _raise_terminated(signum, frame) -> None:
    raise Terminated()


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While the block runs, SIGTERM raises `Terminated`, so it marks running trials failed and
    writes what exists, as Ctrl-C does (Python's default for SIGTERM is to die on the spot)."""
    try:
        before = signal.signal(signal.SIGTERM, _raise_terminated)
    except ValueError:  # not the main thread: signals stay as they are
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


_pending: list[KeyboardInterrupt] = []  # a signal noted by `deferred_interrupts`, not raised yet


def raise_if_interrupted() -> None:
    """A safe point: raise the Ctrl-C or SIGTERM that arrived since the last one, if any."""
    if _pending:
        raise _pending.pop()


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    """While the block runs, Ctrl-C and SIGTERM are noted and raised at the next safe point
    (`raise_if_interrupted`: between a scorer's batches, between a trial's steps), never inside a
    storage commit, which would leave the study's database session broken just when the running
    trial must be marked failed. A second signal interrupts at once. On leaving the block a noted
    signal is raised."""

    def note(signum, frame) -> None:
        interrupt = Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
        if _pending:
            _pending.clear()
            raise interrupt
        _pending.append(interrupt)

    try:
        before = {sig: signal.signal(sig, note) for sig in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: signals stay as they are
        yield
        return
    _pending.clear()
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
    raise_if_interrupted()
