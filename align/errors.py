"""User-facing errors: one paragraph that names the field or row, never a traceback."""


class AlignError(Exception):
    """A mistake in a recipe, a dataset or a command line. The CLI prints it and exits 2."""
