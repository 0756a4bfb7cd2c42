"""``${stages.<name>}``: how a recipe names another stage's output folder (one pattern for every reader)."""

from __future__ import annotations

import re

STAGE_NAME = r"[A-Za-z0-9_.\-]+"
REF_PATTERN = re.compile(rf"^\$\{{stages\.({STAGE_NAME})\}}$")  # a whole value that is a reference
# a whole unquoted value only (YAML flow syntax would refuse it): `${stages.sft}x` stays as written, so the
# error names the field, not align's quotes
UNQUOTED_REF = re.compile(rf"""(?<!["'\w$])(\$\{{stages\.{STAGE_NAME}\}})(?=[ \t]*(?:[,}}\]]|\#|$))""", re.M)


def plain(spec: dict) -> dict:
    """A dataset spec as the data layer takes it: references become plain folder paths."""
    return {k: str(v) if isinstance(v, StageRef) else v for k, v in spec.items()}


class StageRef(str):
    """The output folder of another stage; ``.stage`` is that stage's name."""

    stage: str

    def __new__(cls, path: str, stage: str):
        obj = super().__new__(cls, path)
        obj.stage = stage
        return obj
