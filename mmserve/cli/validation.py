"""Turn a pydantic ValidationError about command-line options into one readable UserError.

Training and serving options are validated by pydantic models; users typed flags, not field names,
so each problem is reported as `--flag-name: message`.
"""

from __future__ import annotations

from pydantic import ValidationError

from mmserve.errors import UserError

__all__ = ["options_error"]


def options_error(exc: ValidationError, what: str) -> UserError:
    """`invalid <what>: --flag: problem; --other: problem` (field names spelled as their flags)."""
    problems = "; ".join(
        ("--" + "-".join(map(str, err["loc"])).replace("_", "-") + ": " if err["loc"] else "")
        + err["msg"].removeprefix("Value error, ")
        for err in exc.errors()
    )
    return UserError(f"invalid {what}: {problems}")
