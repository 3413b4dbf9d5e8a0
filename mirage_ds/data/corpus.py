"""Where each data stream comes from: the recipe's shard directories, or the embedded synthetic corpus."""

from __future__ import annotations

from pathlib import Path

from mirage_ds.cache import build_lock, cache_root
from mirage_ds.config import ConfigError, TrainConfig
from mirage_ds.data.synthetic import build_synthetic
from mirage_ds.specs.synthetic import SyntheticSpec


def ensure_synthetic(spec: SyntheticSpec) -> Path:
    """The cached synthetic corpus for ``spec``, built once; concurrent ranks wait on a file lock."""
    target = cache_root() / "data" / f"synthetic-{spec.digest()}"
    with build_lock(target):
        if not (target / "manifest.json").is_file():
            build_synthetic(spec, target)
    return target


def _synthetic_dirs(corpus: Path, stream: str, train_split: str) -> Path | list[Path]:
    if stream != "train":
        return corpus / stream
    return [corpus / "retain", corpus / "pretrain"] if train_split == "base" else corpus / train_split


# Streams that are a second draw from a configured set: the same shard directory read as its own stream
# (its own shuffle seed and resume position). NPO's official retain-NPO term reads a retain batch apart
# from the one its CE term reads.
SECOND_DRAWS = {"retain_npo": "retain"}


def resolve_streams(cfg: TrainConfig, streams: tuple[str, ...]) -> dict[str, Path | list[Path]]:
    configured = {"train": cfg.data.train, "forget": cfg.data.forget, "retain": cfg.data.retain}
    out: dict[str, Path | list[Path]] = {}
    corpus: Path | None = None
    for name in streams:
        source = SECOND_DRAWS.get(name, name)
        if source not in configured:
            raise ConfigError(f"loss {cfg.loss.name!r} asks for an unknown data stream {name!r}")
        if configured[source] is not None:
            out[name] = Path(configured[source])
        else:
            corpus = corpus or ensure_synthetic(cfg.data.synthetic)
            out[name] = _synthetic_dirs(corpus, source, cfg.data.synthetic_train)
    return out
