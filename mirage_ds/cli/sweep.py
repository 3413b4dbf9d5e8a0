"""Sweep files: a grid of recipes x overrides x seeds, expanded into numbered tasks for a Slurm job array.

A sweep file (YAML)::

    name: sample                  # runs land in <output_root>/<name>/<index>-<slug>
    recipes: [sft_lora, npo_lora]
    grid:                         # dotted config key -> values; every combination is one task
      optim.lr: [1.0e-3, 3.0e-3]
    seeds: [0, 1]                 # optional; each seed is one more task per combination
    overrides:                    # optional; applied to every task
      max_steps: 20
    output_root: runs             # optional; relative paths are relative to the repository root

Task order is fixed by the file: recipes in the order written, then the grid's product with the first
key varying slowest and the last fastest, then seeds. Reordering the file renumbers the tasks, so an
array task index means the same run on every node and on every requeue of a given file.

``mirage-ds sweep FILE --count`` (or ``python -m mirage_ds.cli.sweep``, what slurm/ uses) prints the array
size (after validating every task's config); ``--task I`` prints task I's launcher arguments, shell-quoted;
``--task I --shell`` prints bash assignments for ``eval`` (what slurm/sweep.sh uses); ``--list`` prints one
line per task; ``--parent`` prints the id of the sweep's MLflow parent run, creating it (and the store) the
first time (what slurm/submit does before sbatch).
"""

from __future__ import annotations

import argparse
import itertools
import re
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

SWEEP_KEYS = ("name", "recipes", "grid", "seeds", "overrides", "output_root")
# The sweep owns these: each task gets its own output_dir, and seeds come from ``seeds``.
RESERVED_OVERRIDES = ("output_dir", "resume")


class SweepError(ValueError):
    """A one-line, user-facing error in a sweep file (naming the file and the key)."""


@dataclass(frozen=True)
class Task:
    """One array task: a recipe, its ``key=value`` overrides and the directory its run writes to."""

    index: int
    recipe: str
    overrides: tuple[str, ...]
    output_dir: str

    def argv(self) -> list[str]:
        """The arguments after ``launcher/run.py``."""
        return ["--recipe", self.recipe, *self.overrides, f"output_dir={self.output_dir}"]


@dataclass(frozen=True)
class Sweep:
    """A validated sweep file (``parse_sweep``); ``expand`` turns it into tasks."""

    name: str
    recipes: tuple[str, ...]
    grid: tuple[tuple[str, tuple[Any, ...]], ...]
    seeds: tuple[int, ...]
    overrides: tuple[tuple[str, Any], ...]
    output_root: str

    @property
    def directory(self) -> Path:
        """Where every task's output_dir lies (relative paths are relative to the repository root)."""
        return Path(self.output_root) / self.name


def render_value(value: Any) -> str:
    """A value as the launcher's override parser (``yaml.safe_load``) reads back unchanged."""
    if isinstance(value, str) and value != "" and yaml.safe_load(value) == value:
        return value
    text = yaml.safe_dump(value, default_flow_style=True, width=1 << 16).strip()
    return text.removesuffix("...").strip()


def _slug_part(value: Any) -> str:
    return re.sub(r"[^A-Za-z0-9.+-]+", "_", render_value(value)).strip("_") or "_"


def _require(data: dict[str, Any], key: str, kind: type, source: Path) -> Any:
    value = data.get(key)
    if not isinstance(value, kind) or not value:
        raise SweepError(f"{source}: key {key!r}: expected a non-empty {kind.__name__}, got {value!r}")
    return value


def parse_sweep(data: Any, source: Path) -> Sweep:
    """Validate a sweep mapping. Every error is one line naming ``source`` and the key."""
    if not isinstance(data, dict):
        raise SweepError(f"{source}: expected a mapping at the top level, got {type(data).__name__}")
    for key in data:
        if key not in SWEEP_KEYS:
            raise SweepError(f"{source}: unknown key {key!r} (allowed: {', '.join(SWEEP_KEYS)})")
    name = _require(data, "name", str, source)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
        raise SweepError(f"{source}: key 'name': {name!r} must be a plain directory name ([A-Za-z0-9._-])")
    recipes = _require(data, "recipes", list, source)
    if not all(isinstance(r, str) and r for r in recipes):
        raise SweepError(f"{source}: key 'recipes': expected a list of recipe names, got {recipes!r}")
    grid = data.get("grid") or {}
    if not isinstance(grid, dict):
        raise SweepError(f"{source}: key 'grid': expected a mapping of dotted.key -> list of values, got {grid!r}")
    for key, values in grid.items():
        if not isinstance(values, list) or not values:
            raise SweepError(f"{source}: key 'grid.{key}': expected a non-empty list of values, got {values!r}")
    overrides = data.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise SweepError(f"{source}: key 'overrides': expected a mapping of dotted.key -> value, got {overrides!r}")
    seeds = data.get("seeds")
    if seeds is not None and (not isinstance(seeds, list) or not seeds or not all(type(s) is int for s in seeds)):
        raise SweepError(f"{source}: key 'seeds': expected a non-empty list of integers, got {seeds!r}")
    for section, keys in (("grid", grid), ("overrides", overrides)):
        for key in keys:
            if key in RESERVED_OVERRIDES or (key == "seed" and seeds is not None):
                owner = "'seeds'" if key == "seed" else "the sweep"
                raise SweepError(f"{source}: key '{section}.{key}': set by {owner}, not by {section}")
        if section == "overrides" and set(keys) & set(grid):
            raise SweepError(f"{source}: key 'overrides.{sorted(set(keys) & set(grid))[0]}': also in 'grid'")
    output_root = data.get("output_root", "runs")
    if not isinstance(output_root, str) or not output_root:
        raise SweepError(f"{source}: key 'output_root': expected a directory path, got {output_root!r}")
    return Sweep(
        name=name,
        recipes=tuple(recipes),
        grid=tuple((str(k), tuple(v)) for k, v in grid.items()),
        seeds=tuple(seeds) if seeds is not None else (),
        overrides=tuple((str(k), v) for k, v in overrides.items()),
        output_root=output_root,
    )


def load_sweep(path: str | Path) -> Sweep:
    """Read and validate a sweep file (``parse_sweep``); a missing file or bad YAML is one line too."""
    source = Path(path)
    if not source.is_file():
        raise SweepError(f"{source}: no such sweep file")
    try:
        data = yaml.safe_load(source.read_text())
    except yaml.YAMLError as err:
        raise SweepError(f"{source}: not valid YAML: {str(err).splitlines()[0]}") from None
    return parse_sweep(data, source)


def expand(sweep: Sweep) -> list[Task]:
    """All tasks in array order: recipes, then the grid's product (last key fastest), then seeds."""
    keys = [key for key, _ in sweep.grid]
    combos = list(itertools.product(*(values for _, values in sweep.grid)))
    seeds: tuple[int | None, ...] = sweep.seeds or (None,)
    total = len(sweep.recipes) * len(combos) * len(seeds)
    width = max(3, len(str(total - 1)))
    common = [f"{key}={render_value(value)}" for key, value in sweep.overrides]
    tasks = []
    for index, (recipe, combo, seed) in enumerate(itertools.product(sweep.recipes, combos, seeds)):
        grid = [f"{key}={render_value(value)}" for key, value in zip(keys, combo)]
        seed_arg = [] if seed is None else [f"seed={seed}"]
        # The slug names the run by what varies: the last segment of each grid key, then the seed.
        slug = "-".join(
            [Path(recipe).stem]
            + [f"{key.rsplit('.', 1)[-1]}{_slug_part(value)}" for key, value in zip(keys, combo)]
            + ([] if seed is None else [f"seed{seed}"])
        )
        output_dir = f"{sweep.directory}/{index:0{width}d}-{slug[:100]}"
        tasks.append(Task(index, recipe, tuple(common + grid + seed_arg), output_dir))
    return tasks


def check(tasks: list[Task], source: str | Path) -> None:
    """Load every task's config as the launcher will, so a bad key fails before anything is queued."""
    # Imported here: the config brings in pydantic and the loss registry, which --task does not need.
    from mirage_ds.config import ConfigError, load_config

    for task in tasks:
        try:
            load_config(task.recipe, [*task.overrides, f"output_dir={task.output_dir}"])
        except ConfigError as err:
            raise SweepError(f"{source}: task {task.index} ({task.output_dir}): {err}") from None


def shell_assignments(sweep: Sweep, task: Task) -> str:
    """Bash lines that set the task's variables; every value is shell-quoted, so ``eval`` is safe."""
    return "\n".join([
        f"MIRAGE_SWEEP_NAME={shlex.quote(sweep.name)}",
        f"MIRAGE_SWEEP_TASK={task.index}",
        f"MIRAGE_TASK_OUTPUT_DIR={shlex.quote(task.output_dir)}",
        f"MIRAGE_TASK_ARGS=({shlex.join(task.argv())})",
    ])


def tracked_parent(sweep: Sweep, tasks: list[Task]) -> str:
    """The sweep's MLflow parent run id (created once, see tracking/sweep_parent.py); empty when its tasks
    do not track (``tracking.mlflow=false``). The experiment is task 0's."""
    from mirage_ds.config import load_config
    from mirage_ds.tracking.store import experiment_name, store_uri
    from mirage_ds.tracking.sweep_parent import sweep_parent

    first = tasks[0]
    tracking = load_config(first.recipe, [*first.overrides, f"output_dir={first.output_dir}"]).tracking
    if not tracking.mlflow:
        return ""
    try:
        return sweep_parent(sweep.directory, sweep.name, experiment_name(tracking.experiment))
    except Exception as err:  # noqa: BLE001 - a store or server error of any kind: say where and what to do
        raise SweepError(f"cannot create the sweep's MLflow parent run at {store_uri()}: {str(err).splitlines()[0][:300]} "
                         "(start the tracking server, or set tracking.mlflow: false in the sweep's overrides)") from None


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sweep_file", help="a sweep YAML file (the format above; slurm/sweeps/ holds examples)")
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--count", action="store_true", help="validate every task, print the number of tasks")
    action.add_argument("--task", type=int, metavar="I", help="print task I's launcher arguments, shell-quoted")
    action.add_argument("--list", action="store_true", help="print index, output_dir and arguments of every task")
    action.add_argument("--parent", action="store_true",
                        help="print the sweep's MLflow parent run id, creating it and the store the first time")
    parser.add_argument("--shell", action="store_true",
                        help="with --task: print bash assignments MIRAGE_SWEEP_NAME, MIRAGE_SWEEP_TASK, "
                             "MIRAGE_TASK_OUTPUT_DIR and the array MIRAGE_TASK_ARGS, for eval")


def _run(args: argparse.Namespace) -> int:
    try:
        if args.shell and args.task is None:
            raise SweepError("--shell needs --task I")
        sweep = load_sweep(args.sweep_file)
        tasks = expand(sweep)
        if args.count:
            check(tasks, args.sweep_file)
            print(len(tasks))
        elif args.list:
            for task in tasks:
                print(f"{task.index}\t{task.output_dir}\t{shlex.join(task.argv())}")
        elif args.parent:
            print(tracked_parent(sweep, tasks))
        else:
            if not 0 <= args.task < len(tasks):
                raise SweepError(f"{args.sweep_file}: task {args.task} out of range (the sweep has {len(tasks)} tasks)")
            task = tasks[args.task]
            print(shell_assignments(sweep, task) if args.shell else shlex.join(task.argv()))
    except SweepError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


def add_sweep_command(sub: argparse._SubParsersAction) -> None:
    """``mirage-ds sweep``: the same arguments as ``python -m mirage_ds.cli.sweep``."""
    parser = sub.add_parser("sweep", help="expand a sweep file into array tasks (what slurm/submit and sweep.sh use)",
                            description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(parser)
    parser.set_defaults(func=_run)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mirage_ds.cli.sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _add_arguments(parser)
    return _run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
