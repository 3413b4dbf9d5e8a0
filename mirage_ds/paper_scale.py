"""A recipe's paper-scale settings, kept as data in the recipe file itself (its ``paper_scale`` block).

``overrides`` are what the paper's LLaVA-1.5-7B run sets (dotted ``key=value``, as on the command line);
``inputs`` are what only the user can give (the checkpoint, the shard directories, the step count), each with
a note on what it holds. ``launcher/run.py --paper-scale`` applies the overrides before the user's own (the
user's win) and refuses to start without every input; ``mirage-ds recipes NAME --paper-scale`` prints them.
The README points at that command and the tests run the overrides, so none of them can drift.

The block belongs to its own file and is not inherited: ``mixed_sft_full`` and ``base_full`` both inherit
``sft_full`` but train at paper scale differently (or not at all). Torch-free, like ``config.py``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from mirage_ds.config import ConfigError, _load_yaml, list_recipes, recipe_path


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
        return overrides

    def apply(self, user_overrides: list[str]) -> list[str]:
        """The paper-scale overrides followed by ``user_overrides`` (later ones win); raises ``ConfigError``
        naming every input the user did not give."""
        given = {item.split("=", 1)[0] for item in user_overrides if "=" in item}
        missing = [f"{key}=<{note}>" for key, note in self.inputs.items() if key not in given]
        if missing:
            raise ConfigError(f"--paper-scale {self.recipe}: also give {' '.join(missing)}")
        return [*self.overrides, *user_overrides]

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
