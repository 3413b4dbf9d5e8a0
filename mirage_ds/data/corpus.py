"""Where each data stream comes from: the recipe's shard directories, or the embedded synthetic corpus.

The synthetic corpus stands in only for a run that names nothing real: once ``model.path`` (other than the
export of an embedded run) or any ``data.*`` directory is given, every stream the loss reads must be given
too, or a real model would train on toy data without a word (``check_streams``).
"""

from __future__ import annotations

from pathlib import Path

from mirage_ds.cache import build_lock, cache_root
from mirage_ds.config import ConfigError, TrainConfig, load_config
from mirage_ds.data.synthetic import build_synthetic
from mirage_ds.data.writer import read_manifest
from mirage_ds.specs.synthetic import SyntheticSpec

DATA_KEYS = ("train", "forget", "retain")
# The manifest count of samples whose image was generated because the real one was not given (writer.py).
PLACEHOLDER_COUNT = "image.placeholder"


def ensure_synthetic(spec: SyntheticSpec) -> Path:
    """The cached synthetic corpus for ``spec``, built once; concurrent ranks wait on a file lock."""
    target = cache_root() / "data" / f"synthetic-{spec.digest()}"
    with build_lock(target):
        if not (target / "manifest.json").is_file():
            build_synthetic(spec, target)
    return target


def embedded_export(model_path: Path, depth: int = 0) -> bool:
    """Whether ``model_path`` is the export of a run on the embedded model and corpus (``RUN/export`` beside
    ``RUN/config.yaml``), however many such runs deep: `make demo` trains its methods from its base's export,
    and that chain still fits the embedded corpus."""
    config = model_path.parent / "config.yaml"
    if model_path.name != "export" or not config.is_file() or depth > 8:
        return False
    cfg = load_config(str(config))
    if any(getattr(cfg.data, name) for name in DATA_KEYS):
        return False
    return cfg.model.path is None or embedded_export(Path(cfg.model.path), depth + 1)


def real_inputs(cfg: TrainConfig) -> list[str]:
    """``key=value`` for each real input the config names: ``model.path`` (unless an embedded run's export)
    and the ``data.*`` shard directories. Empty: the run is on the embedded model and corpus."""
    real = [f"model.path={cfg.model.path}"] if cfg.model.path and not embedded_export(Path(cfg.model.path)) else []
    return real + [f"data.{name}={getattr(cfg.data, name)}" for name in DATA_KEYS if getattr(cfg.data, name)]


def _synthetic_dirs(corpus: Path, stream: str, train_split: str) -> Path | list[Path]:
    if stream != "train":
        return corpus / stream
    return [corpus / "retain", corpus / "pretrain"] if train_split == "base" else corpus / train_split


# Streams that are a second draw from a configured set: the same shard directory read as its own stream
# (its own shuffle seed and resume position). NPO's official retain-NPO term reads a retain batch apart
# from the one its CE term reads.
SECOND_DRAWS = {"retain_npo": "retain"}


def _sources(cfg: TrainConfig, streams: tuple[str, ...]) -> dict[str, str]:
    """Each stream -> the data key it reads (``train`` / ``forget`` / ``retain``)."""
    sources = {name: SECOND_DRAWS.get(name, name) for name in streams}
    for name, source in sources.items():
        if source not in DATA_KEYS:
            raise ConfigError(f"loss {cfg.loss.name!r} asks for an unknown data stream {name!r}")
    return sources


def check_streams(cfg: TrainConfig, streams: tuple[str, ...]) -> None:
    """``ConfigError`` (one line naming the unset keys) when the config names a real input but leaves a stream
    the loss reads unset: the synthetic corpus is for runs that name nothing real."""
    missing = sorted({f"data.{source}" for source in _sources(cfg, streams).values() if getattr(cfg.data, source) is None})
    real = real_inputs(cfg) if missing else []
    if real:
        raise ConfigError(f"loss {cfg.loss.name!r} reads {', '.join(missing)}, unset while the run names "
                          f"{', '.join(real)}: give {' '.join(f'{key}=<shard dir>' for key in missing)} (the synthetic "
                          "corpus stands in only when model.path and every data.* are unset)")


def resolve_streams(cfg: TrainConfig, streams: tuple[str, ...]) -> dict[str, Path | list[Path]]:
    check_streams(cfg, streams)
    out: dict[str, Path | list[Path]] = {}
    corpus: Path | None = None
    for name, source in _sources(cfg, streams).items():
        if getattr(cfg.data, source) is not None:
            out[name] = Path(getattr(cfg.data, source))
        else:
            corpus = corpus or ensure_synthetic(cfg.data.synthetic)
            out[name] = _synthetic_dirs(corpus, source, cfg.data.synthetic_train)
    return out


def placeholder_images(stream_dirs: dict[str, Path | list[Path]]) -> dict[str, int]:
    """``data.<stream>`` -> how many of its samples have a generated placeholder image (shards built without
    ``--images``), from the manifests. Streams without any, and second draws of a counted set, are left out."""
    counts = {}
    for name, dirs in stream_dirs.items():
        if name in SECOND_DRAWS:
            continue
        n = sum(read_manifest(d).counts.get(PLACEHOLDER_COUNT, 0) for d in (dirs if isinstance(dirs, list) else [dirs]))
        if n:
            counts[f"data.{name}"] = n
    return counts


def data_header(cfg: TrainConfig, stream_dirs: dict[str, Path | list[Path]]) -> tuple[list[str], dict[str, int]]:
    """The run header's data lines (the synthetic corpus when it stands in, each stream's placeholder count)
    and the tracker params ``data.<stream>.placeholder_images``."""
    counts = placeholder_images(stream_dirs)
    lines = [] if real_inputs(cfg) else [f"data: the embedded synthetic corpus for {', '.join(stream_dirs)} "
                                         "(the run names no real model or data)"]
    lines += [f"{key}: {n} samples have generated placeholder images, not real ones (shards built without --images)"
              for key, n in counts.items()]
    return lines, {f"{key}.placeholder_images": n for key, n in counts.items()}
