"""User-facing errors: the CLI prints their message on one line and exits with code 2."""


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
