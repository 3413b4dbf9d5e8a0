"""What one ``mirage-ds reproduce`` runs: the Table 1 methods, their sizes on the embedded world, the LoRA
and quick variants of those sizes, and the plan that picks among them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mirage_ds.config import ConfigError

# (row name, recipe stem, overrides for the embedded world): the recipe is ``<stem>_<variant>``. The
# overrides size each run for the pretrained embedded base (the recipes' own defaults are smoke-sized).
METHODS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("Unsafe-Filter", "unsafe_filter", ("max_steps=40", "micro_batch_size=8", "optim.lr=3e-4")),
    ("Mixed-SFT", "mixed_sft", ("max_steps=90", "micro_batch_size=8", "optim.lr=3e-4")),
    # Fewer samples than Mixed-SFT (540 vs 720), as the paper's Posthoc-SFT sees VLGuard plus 5k instructions.
    ("Posthoc-SFT", "posthoc_sft", ("max_steps=90", "micro_batch_size=6", "optim.lr=3e-4")),
    # 5e-4, not the 1.5e-4 measured on the Intel Xeon machines of wave 2: the base built on an AMD EPYC (AVX-512)
    # machine is another model (each machine's build is deterministic; their float kernels differ), saturated on
    # the forget answers (token-mean log-prob -0.0036), where 1.5e-4 x 30 steps left the held-out harm (ASR
    # 76 / 78). Searched over 1.5e-4, 5e-4, 1e-3 (docs/reproduce-results.md): the smallest rate that unlearns.
    ("NPO", "npo", ("max_steps=30", "micro_batch_size=8", "optim.lr=5e-4")),
    # The official preset's retain CE term (paper_scale: loss.retain_ce_weight=1) keeps answers fluent.
    ("RMU", "rmu", ("max_steps=40", "micro_batch_size=8", "optim.lr=1e-3", "loss.retain_ce_weight=1")),
)
# VARIANT=lora: each method's overrides above, then these (the adapters learn at about 7x the rate).
LORA: dict[str, tuple[str, ...]] = {
    "Unsafe-Filter": ("optim.lr=2e-3",),
    "Mixed-SFT": ("optim.lr=2e-3",),
    "Posthoc-SFT": ("optim.lr=2e-3",),
    "NPO": ("max_steps=40", "optim.lr=1.5e-3"),
    "RMU": ("optim.lr=5e-3",),
}
# --quick: each method's overrides above, then these (fewer steps), and every evaluation on the first
# QUICK_EVAL_ARGS' items per subset, so that with the base cached the table takes minutes, not tens.
QUICK: dict[str, tuple[str, ...]] = {
    "Unsafe-Filter": ("max_steps=20",),
    "Mixed-SFT": ("max_steps=60",),
    "Posthoc-SFT": ("max_steps=50",),
    # NPO and RMU keep their steps: they are the cheap rows, and fewer steps leave the held-out harm in place.
}
QUICK_EVAL_ARGS = ("--limit=25",)
# In each run directory of a reproduction (``OUT/base``, ``OUT/<stem>``): the plan it was run for
# (``Reproduction.records``). A directory is reused only when this matches the plan asked for.
PLAN_FILE = "plan.json"


@dataclass(frozen=True)
class Reproduction:
    """What one ``mirage-ds reproduce`` runs: the variant (``full`` or ``lora`` recipes), the seed, the ranks
    per training run, overrides applied to every recipe (e.g. ``data.synthetic.what_rate=0.5``), the
    methods (rows of ``METHODS``) and ``quick``: ``QUICK``'s fewer steps and ``QUICK_EVAL_ARGS``."""

    out_dir: Path
    variant: str = "full"
    seed: int = 0
    ranks: int = 1
    overrides: tuple[str, ...] = ()
    experiment: str | None = None
    methods: tuple[tuple[str, str, tuple[str, ...]], ...] = METHODS
    eval_args: tuple[str, ...] = field(default=())
    quick: bool = False
    jobs: int = 1  # trainings / evaluations at once: each is its own process, and its numbers do not depend on this

    def __post_init__(self) -> None:
        if self.jobs < 1:
            raise ConfigError(f"--jobs {self.jobs}: at least 1 run at a time")
        # Absolute before any of it reaches a child process: children start in the caller's directory, but a
        # path in a record or a table must not depend on where it is read from.
        object.__setattr__(self, "out_dir", Path(self.out_dir).absolute())

    @property
    def experiment_name(self) -> str:
        return self.experiment or f"reproduce-{'quick-' if self.quick else ''}{self.variant}-seed{self.seed}"

    @property
    def sized_methods(self) -> tuple[tuple[str, str, tuple[str, ...]], ...]:
        """``methods`` with ``LORA``'s overrides after each one's own for the LoRA variant, then ``QUICK``'s when
        quick (the later override wins)."""
        lora = LORA if self.variant == "lora" else {}
        quick = QUICK if self.quick else {}
        return tuple((name, stem, (*sized, *lora.get(name, ()), *quick.get(name, ()))) for name, stem, sized in self.methods)

    @property
    def evaluation_args(self) -> tuple[str, ...]:
        return (*QUICK_EVAL_ARGS, *self.eval_args) if self.quick else self.eval_args

    @property
    def run_overrides(self) -> tuple[str, ...]:
        """Every training run's overrides after its method's sizes: the seed, then ``overrides``."""
        return (f"seed={self.seed}", *self.overrides)

    def records(self, base: Path, corpus: Path) -> dict[str, dict[str, Any]]:
        """Each run directory's plan (``PLAN_FILE``), by directory name: everything its numbers depend on. The
        base's evaluation: the model, the corpus, the evaluation's arguments; a method's: its recipe (the
        variant), its sizes, the seed and overrides, the ranks, the base it starts from and the evaluation's
        arguments. Not the MLflow experiment nor ``jobs``: they change where a run is logged and when it
        runs, not its numbers."""
        evaluation = list(self.evaluation_args)
        records: dict[str, dict[str, Any]] = {"base": {"model": str(base), "corpus": str(corpus), "eval_args": evaluation}}
        for name, stem, sized in self.sized_methods:
            records[stem] = {"method": name, "recipe": f"{stem}_{self.variant}", "overrides": [*sized, *self.run_overrides],
                             "ranks": self.ranks, "base": str(base), "eval_args": evaluation}
        return records


def plan_difference(recorded: dict[str, Any] | None, asked: dict[str, Any]) -> str:
    """What differs between a run directory's recorded plan and the plan asked for, both named."""
    if recorded is None:
        return f"it records no plan ({PLAN_FILE}), asked {asked}"
    parts = []
    for key in {**recorded, **asked}:
        was, now = recorded.get(key), asked.get(key)
        if was == now:
            continue
        if isinstance(was, list) and isinstance(now, list) and set(map(str, was)) != set(map(str, now)):
            # the items on one side only: "overrides: recorded seed=0, asked seed=1"
            was, now = [item for item in was if item not in now], [item for item in now if item not in was]
        parts.append(f"{key}: recorded {_listed(was)}, asked {_listed(now)}")
    return "; ".join(parts)


def _listed(value: Any) -> str:
    if isinstance(value, list):
        return ", ".join(map(str, value)) if value else "nothing"
    return str(value)


def default_out(variant: str, seed: int, quick: bool) -> Path:
    """``runs/reproduce`` (``runs/reproduce-quick`` with ``quick``) for the full variant at seed 0, else
    ``<that>/<variant>-seed<seed>``: another variant or seed gets a directory of its own by default."""
    root = Path("runs/reproduce-quick" if quick else "runs/reproduce")
    return root if (variant, seed) == ("full", 0) else root / f"{variant}-seed{seed}"


def select_methods(names: str) -> tuple[tuple[str, str, tuple[str, ...]], ...]:
    """The rows of ``METHODS`` named in ``names`` (comma-separated row names), in ``METHODS``' order."""
    wanted = [name.strip() for name in names.split(",") if name.strip()]
    known = [name for name, _, _ in METHODS]
    unknown = [name for name in wanted if name not in known]
    if unknown or not wanted:
        raise ConfigError(f"--methods {names!r}: unknown {', '.join(unknown) or 'empty'} (known: {', '.join(known)})")
    return tuple(row for row in METHODS if row[0] in wanted)
