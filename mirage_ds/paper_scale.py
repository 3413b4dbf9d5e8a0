"""A recipe's paper-scale settings, kept as data in the recipe file itself (its ``paper_scale`` block).

``overrides`` are what the paper's LLaVA-1.5-7B run sets (dotted ``key=value``, as on the command line): its
length in ``epochs`` (resolved to steps from the data and the world, engine/resolution.py) and the checkpoint
cadence a long run needs among them; ``inputs`` are what only the user can give (the checkpoint, the shard
directories), each with a note on what it holds. ``launcher/run.py --paper-scale`` applies the overrides before the user's own (the
user's win) and refuses to start without every input; ``mirage-ds recipes NAME --paper-scale`` prints them.
The README points at that command and the tests run the overrides, so none of them can drift.

The block belongs to its own file and is not inherited: ``mixed_sft_full`` and ``base_full`` both inherit
``sft_full`` but train at paper scale differently (or not at all). Torch-free, like ``config.py``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from mirage_ds.config import RUN_LENGTH, ConfigError, _load_yaml, list_recipes, recipe_path


# A paper-scale run takes hours: its block gives the length in epochs, as the paper does, and a checkpoint cadence.
LONG_RUN_KEYS = ("epochs", "checkpoint.every", "checkpoint.keep")


class PaperScale(BaseModel):
    """The ``paper_scale`` block of one recipe."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    recipe: str
    overrides: list[str]
    inputs: dict[str, str]

    @field_validator("overrides")
    @classmethod
    def _dotted(cls, overrides: list[str]) -> list[str]:
        for item in overrides:
            if "=" not in item:
                raise ValueError(f"{item!r}: expected dotted.key=value")
        keys = {item.split("=", 1)[0] for item in overrides}
        missing = [key for key in LONG_RUN_KEYS if key not in keys]
        if missing:
            raise ValueError(f"sets no {', '.join(missing)} (a paper-scale run gives {', '.join(LONG_RUN_KEYS)})")
        return overrides

    def layered(self, user_overrides: list[str]) -> list[str]:
        """The paper-scale overrides followed by ``user_overrides`` (later ones win). The user's ``max_steps``
        replaces the block's ``epochs`` and the other way round: both are the run's length (``RUN_LENGTH``)."""
        given = {item.split("=", 1)[0] for item in user_overrides if "=" in item}
        ours = [item for item in self.overrides if not (item.split("=", 1)[0] in RUN_LENGTH and given & set(RUN_LENGTH))]
        return [*ours, *user_overrides]

    def apply(self, user_overrides: list[str]) -> list[str]:
        """``layered(user_overrides)``; raises ``ConfigError`` naming every input the user did not give."""
        given = {item.split("=", 1)[0] for item in user_overrides if "=" in item}
        missing = [f"{key}=<{note}>" for key, note in self.inputs.items() if key not in given]
        if missing:
            raise ConfigError(f"--paper-scale {self.recipe}: also give {' '.join(missing)}")
        return self.layered(user_overrides)

    def command(self) -> str:
        """The launch command (one argument per line), with a ``<...>`` placeholder for each input."""
        inputs = [f"{key}=<{note}>" if " " not in note else f"{key}='<{note}>'" for key, note in self.inputs.items()]
        return " \\\n    ".join([f"deepspeed launcher/run.py --recipe {self.recipe} --paper-scale", *inputs])


def paper_scale_recipes() -> list[str]:
    """The shipped recipes that have a paper-scale run."""
    return [name for name in list_recipes() if "paper_scale" in _load_yaml(recipe_path(name))]


def paper_scale(name: str) -> PaperScale:
    """The ``paper_scale`` block of recipe ``name`` (a name in ``recipes/`` or a YAML path).

    Raises ``ConfigError`` when the recipe has none or the block is malformed, naming the file.
    """
    path = recipe_path(name)
    block = _load_yaml(path).get("paper_scale")
    if block is None:
        raise ConfigError(f"{path}: recipe {path.stem!r} has no paper_scale block (it has no paper-scale run)")
    if not isinstance(block, dict):
        raise ConfigError(f"{path}: paper_scale must be a mapping with 'overrides' and 'inputs'")
    try:
        return PaperScale(recipe=path.stem, **block)
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        raise ConfigError(f"{path}: paper_scale.{key}: {first['msg']}") from None
