"""Options that mean the same on every command: recipe overrides, ``--judge``, ``--dtype`` / ``--device``,
``--template``, and old spellings that point at their replacement.

Overrides are dotted config keys, ``key=value`` (the value read as YAML, ``config.apply_overrides``), given
positionally or after ``--set``: ``launcher/run.py``, ``recipes``, ``reproduce`` and ``data build synthetic``
take both, in the order typed. Nothing here imports torch: every command's ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

from mirage_ds.config import ModelConfig
from mirage_ds.data.schema import DataError
from mirage_ds.eval.keywords.refusal import DEFAULT_VERSION, VERSIONS
from mirage_ds.specs.system_prompts import SYSTEM_PROMPTS

LOAD_DTYPES = get_args(ModelConfig.model_fields["dtype"].annotation)


class _Overrides(argparse.Action):
    """Appends ``key=value`` items to ``dest`` in command-line order, positional or after ``--set``; with
    ``names``, a positional item without "=" goes to that attribute instead (``recipes NAME key=value``)."""

    def __init__(self, *args: Any, names: str | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.names = names

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        # An override without "=" reaches load_config, whose error names it (one line, exit 2).
        for item in [values] if isinstance(values, str) else values:
            into = self.names if self.names and option_string is None and "=" not in item else self.dest
            setattr(namespace, into, [*(getattr(namespace, into, None) or []), item])


def add_override_arguments(parser: argparse.ArgumentParser, help_text: str, names: str | None = None) -> None:
    """Positional ``KEY=VALUE`` and repeatable ``--set KEY=VALUE``, both into ``args.overrides``.

    ``names``: the help of positional names given beside the overrides (``args.names``): a positional
    item without "=" is a name. argparse reads one run of positional items, so options may not split them.
    """
    metavar = "NAME|KEY=VALUE" if names else "KEY=VALUE"
    positional = f"{names}; KEY=VALUE items are overrides: {help_text}" if names else help_text
    positional += " (positional items in one run, before or after the options)"
    if names:
        parser.set_defaults(names=[])
    parser.add_argument("overrides", nargs="*", action=_Overrides, names="names" if names else None, default=[],
                        metavar=metavar, help=positional)
    parser.add_argument("--set", dest="overrides", action=_Overrides, default=[], metavar="KEY=VALUE",
                        help="one more override, the same as a positional KEY=VALUE (repeatable)")


@dataclass(frozen=True)
class JudgeChoice:
    """What ``--judge`` named: the refusal keyword list and, with ``model:PATH``, a local HF judge model."""

    keywords: str = DEFAULT_VERSION
    model: Path | None = None


JUDGE_SYNTAX = "keyword[:VERSION] or model:PATH"


def add_judge_argument(parser: argparse.ArgumentParser, help_text: str) -> None:
    """``--judge keyword[:VERSION]`` / ``--judge model:PATH`` (repeatable: one of each kind at most)."""
    parser.add_argument("--judge", action="append", default=[], metavar="SPEC",
                        help=f"{help_text}. VERSION: a refusal keyword list, {', '.join(VERSIONS)} "
                             f"(default {DEFAULT_VERSION}: the published list, fixed)")


def judge_choice(specs: list[str]) -> JudgeChoice:
    """The ``--judge`` values as one choice; a DataError (one line) names a malformed or repeated one."""
    keywords: str | None = None
    model: Path | None = None
    for spec in specs:
        kind, _, arg = spec.partition(":")
        if kind not in ("keyword", "model") or (kind == "model" and not arg):
            raise DataError(f"--judge {spec!r}: expected {JUDGE_SYNTAX}")
        if (keywords if kind == "keyword" else model) is not None:
            raise DataError(f"--judge {spec!r}: a second {kind} judge (give at most one of each kind)")
        if kind == "keyword":
            if arg and arg not in VERSIONS:
                raise DataError(f"--judge {spec!r}: unknown refusal keyword version {arg!r} (known: {', '.join(VERSIONS)})")
            keywords = arg or DEFAULT_VERSION
        else:
            if not (Path(arg) / "config.json").is_file():
                raise DataError(f"--judge {spec!r}: {arg} has no config.json (a local HF checkpoint directory)")
            model = Path(arg)
    return JudgeChoice(keywords or DEFAULT_VERSION, model)


def add_model_arguments(parser: argparse.ArgumentParser, what: str = "the model") -> None:
    """``--dtype`` (``auto``: ``models.loading.resolve_dtype``) and ``--device`` (``models.loading.default_device``)."""
    parser.add_argument("--dtype", choices=("auto", *LOAD_DTYPES), default="auto",
                        help=f"dtype to load {what} in: auto (default) is the checkpoint's own (its config.json's "
                             "dtype) on CUDA and fp32 on CPU")
    parser.add_argument("--device", help="torch device (default: this process's GPU, cuda:LOCAL_RANK modulo the "
                                         "GPU count, else cpu)")


def add_template_argument(parser: argparse.ArgumentParser, default: str, why: str) -> None:
    """``--template`` with its choices listed and the reason for this command's default."""
    parser.add_argument("--template", choices=tuple(SYSTEM_PROMPTS), default=default,
                        help=f"LLaVA conversation template (system prompt); default {default}: {why}")


class Renamed(argparse.Action):
    """An old spelling that only points at its replacement: ``error: OLD was replaced by NEW`` on one line and
    exit 2 (argparse's own errors print the usage first). Consumes an optional value, so ``OLD VALUE`` is
    caught at the option rather than as a stray argument."""

    def __init__(self, option_strings: list[str], dest: str, new: str, **kwargs: Any) -> None:
        super().__init__(option_strings, dest=argparse.SUPPRESS, nargs="?", default=argparse.SUPPRESS,
                         metavar="VALUE", help=f"replaced by {new}")
        self.new = new

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        print(f"error: {option_string} was replaced by {self.new}", file=sys.stderr)
        raise SystemExit(2)
