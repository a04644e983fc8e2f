"""User-facing errors: the CLI prints their message on one line and exits with code 2."""


class EvomergeError(Exception):
    """Bad input the user can fix (a path, a recipe, a flag). Raised before any work starts."""


class RecipeError(EvomergeError):
    """A recipe or parameter setting that mergekit would not accept or that is out of range."""


class ParentError(EvomergeError):
    """A parent checkpoint that is missing, corrupt, or incompatible with the others."""
