"""User errors (bad recipe, bad data) become one line on stderr and exit code 2, never a traceback wall."""

from __future__ import annotations

import re
import sys

from mirage_ds.config import ConfigError
from mirage_ds.data.schema import DataError, SampleError


def user_error_types() -> tuple[type[Exception], ...]:
    return (ConfigError, DataError, SampleError)


def one_line(err: BaseException) -> str:
    """The error's own message. A DataLoader worker re-raises with the worker traceback folded into the
    message; its last line is the original ``module.Class: message``."""
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    last = lines[-1] if lines else type(err).__name__
    return re.sub(r"^[\w.]+(Error|Exception): ", "", last)


def report_user_error(err: BaseException, rank: int) -> None:
    # Config errors are identical on every rank: print them once. Data errors are rank-specific.
    if isinstance(err, ConfigError) and rank != 0:
        return
    print(f"error: {one_line(err)}", file=sys.stderr)
