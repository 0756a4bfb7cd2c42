"""User-facing errors: one paragraph that names the field or row, never a traceback."""

import difflib


class AlignError(Exception):
    """A mistake in a recipe, a dataset or a command line. The CLI prints it and exits 2."""


def suggest(word: str, choices) -> str:
    """" Did you mean 'x'?" for the closest of ``choices``, or nothing: the tail of an error naming a typo."""
    close = difflib.get_close_matches(str(word), sorted(map(str, choices)), n=1, cutoff=0.5)
    return f" Did you mean {close[0]!r}?" if close else ""
