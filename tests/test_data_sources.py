"""Where a run's data comes from, checked before any rank starts (engine/preflight.py ``check_data``): the
synthetic corpus only when nothing real is named, every stream the loss reads once anything is; placeholder
images counted in the manifest, named in the run header and refused at paper scale unless allowed. The same
checks through the real launcher are in tests/test_errors.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import load_untrained
from mirage_ds.config import ConfigError, save_config
from mirage_ds.data.corpus import data_header, resolve_streams
from mirage_ds.data.images import placeholder_png
from mirage_ds.data.vlguard import convert_vlguard
from mirage_ds.data.writer import read_manifest
from mirage_ds.engine.preflight import check_data
from mirage_ds.losses.registry import build_loss

FALLBACK = "(the synthetic corpus stands in only when model.path and every data.* are unset)"


@pytest.fixture()
def embedded_export(tmp_path: Path) -> Path:
    """``RUN/export`` beside the ``config.yaml`` of a run on the embedded model and corpus (`make demo`'s base)."""
    save_config(load_untrained("base_full"), tmp_path / "base" / "config.yaml")
    return tmp_path / "base" / "export"


@pytest.mark.parametrize("recipe,overrides,error", [
    ("npo_lora", [], None),
    ("npo_lora", ["model.path=/models/llava", "data.forget=/data/forget"],
     "loss 'npo' reads data.retain, unset while the run names model.path=/models/llava, "
     f"data.forget=/data/forget: give data.retain=<shard dir> {FALLBACK}"),
    ("npo_full", ["loss.preset=official", "data.retain=/data/retain"],  # retain_npo reads retain too: named once
     "loss 'npo' reads data.forget, unset while the run names data.retain=/data/retain: give "
     f"data.forget=<shard dir> {FALLBACK}"),
    ("rmu_lora", ["model.path=/models/llava"],
     "loss 'rmu' reads data.forget, data.retain, unset while the run names model.path=/models/llava: "
     f"give data.forget=<shard dir> data.retain=<shard dir> {FALLBACK}"),
    ("sft_lora", ["model.path=/models/llava", "data.train=/data/train"], None),
    ("sft_lora", ["data.forget=/data/forget"],  # a set the loss does not read is still a real input
     f"loss 'sft' reads data.train, unset while the run names data.forget=/data/forget: give data.train=<shard dir> {FALLBACK}"),
])
def test_a_stream_left_to_the_synthetic_corpus_beside_a_real_input_is_named(recipe: str, overrides: list[str],
                                                                             error: str | None) -> None:
    cfg = load_untrained(recipe, overrides)
    if error is None:
        check_data(cfg)
    else:
        with pytest.raises(ConfigError) as err:
            check_data(cfg)
        assert str(err.value) == error


def test_the_export_of_an_embedded_run_still_trains_on_the_synthetic_corpus(embedded_export: Path, tmp_path: Path) -> None:
    check_data(load_untrained("npo_full", [f"model.path={embedded_export}"]))
    save_config(load_untrained("sft_full", ["data.train=/data/train"]), tmp_path / "real" / "config.yaml")
    with pytest.raises(ConfigError, match=r"reads data.forget, data.retain, unset while the run names "
                                          r"model.path=.*/real/export:"):
        check_data(load_untrained("npo_full", [f"model.path={tmp_path / 'real' / 'export'}"]))


def test_the_run_header_names_the_synthetic_corpus(synthetic_corpus: Path) -> None:
    cfg = load_untrained("npo_full", ["loss.preset=official"])
    lines, params = data_header(cfg, resolve_streams(cfg, build_loss(cfg.loss, cfg.model).needs.streams))
    assert lines == ["data: the embedded synthetic corpus for forget, retain, retain_npo (the run names no real model or data)"]
    assert params == {}


def _vlguard_json(path: Path) -> Path:
    path.write_text('[{"id": "u1", "image": "ads/u1.png", "safe": false, "instr-resp": [{"instruction": "Share it.", '
                    '"response": "No."}]}, {"id": "s1", "image": "ads/s1.png", "safe": true, "instr-resp": '
                    '[{"safe_instruction": "What is it?", "response": "A cat."}]}]')
    return path


def test_placeholder_images_are_counted_reported_and_refused_at_paper_scale(tmp_path: Path) -> None:
    source = _vlguard_json(tmp_path / "train.json")
    convert_vlguard(source, tmp_path / "train")
    assert read_manifest(tmp_path / "train").counts["image.placeholder"] == 2
    images = tmp_path / "images" / "ads"
    images.mkdir(parents=True)
    for name in ("u1.png", "s1.png"):
        (images / name).write_bytes(placeholder_png(name, 8))  # real files: the shards read them
    convert_vlguard(source, tmp_path / "real", images_dir=tmp_path / "images")
    assert "image.placeholder" not in read_manifest(tmp_path / "real").counts

    cfg = load_untrained("sft_lora", ["model.path=/models/llava", f"data.train={tmp_path / 'train'}"])
    lines, params = data_header(cfg, {"train": tmp_path / "train"})
    assert lines == ["data.train: 2 samples have generated placeholder images, not real ones (shards built without --images)"]
    assert params == {"data.train.placeholder_images": 2}
    check_data(cfg)  # only --paper-scale refuses them
    with pytest.raises(ConfigError) as err:
        check_data(cfg, paper_scale=True)
    assert str(err.value) == ("--paper-scale: the shards of data.train (2 samples) hold generated placeholder images, "
                              "not the real ones (built without --images): rebuild them with --images DIR, or set "
                              "data.allow_placeholder_images=true")
    check_data(load_untrained("sft_lora", ["model.path=/models/llava", f"data.train={tmp_path / 'train'}",
                                           "data.allow_placeholder_images=true"]), paper_scale=True)
    check_data(load_untrained("sft_lora", ["model.path=/models/llava", f"data.train={tmp_path / 'real'}"]), paper_scale=True)

