"""Shard writer: real tar files in tmp_path, read back with the project's shard reader, webdataset and tarfile."""

from __future__ import annotations

import json
import tarfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import webdataset as wds

from mirage_ds.data.images import placeholder_png
from mirage_ds.data.schema import DataError, Record, SampleError, decode_record
from mirage_ds.data.shards import read_records, read_samples
from mirage_ds.data.writer import read_manifest, write_shards


def make_sample(i: int, record_id: str | None = None) -> tuple[Record, bytes]:
    record = Record(
        id=record_id or f"test/{i:03d}",
        turns=[{"role": "user", "text": f"question {i}?"}, {"role": "assistant", "text": f"answer {i}"}],
        role="forget" if i % 3 == 0 else "retain",
        source="synthetic",
        subset="unsafes" if i % 3 == 0 else "safe_safes",
        safe=i % 3 != 0,
    )
    return record, placeholder_png(record.id, 8)


def test_writes_shards_members_and_manifest(tmp_path: Path) -> None:
    samples = [make_sample(i) for i in range(20)]
    manifest = write_shards(samples, tmp_path / "out", shard_size=6, name="part", created_by="test")
    assert [s.name for s in manifest.shards] == [f"part-{i:06d}.tar" for i in range(4)]
    assert [s.samples for s in manifest.shards] == [6, 6, 6, 2]
    assert manifest.samples == 20
    assert manifest.counts == {
        "role.forget": 7,
        "role.retain": 13,
        "safe.false": 7,
        "safe.true": 13,
        "source.synthetic": 20,
        "subset.safe_safes": 13,
        "subset.unsafes": 7,
    }
    assert read_manifest(tmp_path / "out") == manifest
    on_disk = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert on_disk["format"] == "mirage-ds/1" and on_disk["created_by"] == "test"
    with tarfile.open(tmp_path / "out" / "part-000000.tar") as archive:
        assert archive.getnames()[:2] == ["test_000.json", "test_000.png"]
    assert read_samples(tmp_path / "out") == samples


def test_webdataset_reads_the_same_samples(tmp_path: Path) -> None:
    """The shards are plain webdataset: its own pipeline sees what the project's reader sees."""
    samples = [make_sample(i) for i in range(11)]
    write_shards(samples, tmp_path / "out", shard_size=4)
    shards = sorted(str(p) for p in (tmp_path / "out").glob("*.tar"))
    dataset = wds.WebDataset(shards, shardshuffle=False, empty_check=False)
    assert [(decode_record(s["json"], s["__key__"]), s["png"]) for s in dataset] == read_samples(tmp_path / "out") == samples


def test_records_only_limit_and_mixture(tmp_path: Path) -> None:
    first, second = [make_sample(i) for i in range(9)], [make_sample(i, f"other/{i}") for i in range(4)]
    write_shards(first, tmp_path / "a", shard_size=4)
    write_shards(second, tmp_path / "b", shard_size=4)
    assert read_records(tmp_path / "a") == [record for record, _ in first]
    assert read_samples(tmp_path / "a", limit=5) == first[:5]
    assert read_samples([tmp_path / "a", tmp_path / "b"]) == first + second


def test_small_dataset_is_split_into_min_shards(tmp_path: Path) -> None:
    manifest = write_shards([make_sample(i) for i in range(20)], tmp_path / "a", shard_size=64, min_shards=8)
    assert [s.samples for s in manifest.shards] == [3, 3, 3, 3, 2, 2, 2, 2]
    few = write_shards([make_sample(i) for i in range(5)], tmp_path / "b", shard_size=64, min_shards=8)
    assert [s.samples for s in few.shards] == [1] * 5


def test_large_dataset_streams_at_shard_size(tmp_path: Path) -> None:
    manifest = write_shards((make_sample(i) for i in range(30)), tmp_path / "out", shard_size=4, min_shards=2)
    assert [s.samples for s in manifest.shards] == [4] * 7 + [2]
    assert len(read_samples(tmp_path / "out")) == 30


def test_exception_mid_stream_leaves_nothing(tmp_path: Path) -> None:
    def failing() -> Iterator[tuple[Record, bytes]]:
        for i in range(10):
            yield make_sample(i)
        raise RuntimeError("source broke")

    with pytest.raises(RuntimeError, match="source broke"):
        write_shards(failing(), tmp_path / "out", shard_size=3)
    assert list(tmp_path.iterdir()) == []
    write_shards([make_sample(i) for i in range(2)], tmp_path / "out", shard_size=3)
    with pytest.raises(RuntimeError, match="source broke"):
        write_shards(failing(), tmp_path / "out", shard_size=3, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    assert read_manifest(tmp_path / "out").samples == 2


def test_duplicate_key_names_both_ids(tmp_path: Path) -> None:
    samples = [make_sample(0, "a/b"), make_sample(1, "a.b")]
    with pytest.raises(DataError, match=r"duplicate sample key 'a_b' for id 'a\.b' \(first used by id 'a/b'\)"):
        write_shards(samples, tmp_path / "out", shard_size=4)
    assert list(tmp_path.iterdir()) == []


def test_non_png_image_is_rejected(tmp_path: Path) -> None:
    record, _ = make_sample(0)
    with pytest.raises(SampleError, match="'test/000': image is not PNG"):
        write_shards([(record, b"\xff\xd8\xff jpeg")], tmp_path / "out", shard_size=4)


def test_existing_dir_is_an_error_unless_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "out"
    write_shards([make_sample(i) for i in range(3)], out, shard_size=4)
    with pytest.raises(DataError, match="already exists"):
        write_shards([make_sample(i) for i in range(5)], out, shard_size=4)
    assert read_manifest(out).samples == 3
    write_shards([make_sample(i) for i in range(5)], out, shard_size=4, overwrite=True)
    assert read_manifest(out).samples == 5
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_written_directory_has_the_permissions_mkdir_gives(tmp_path: Path) -> None:
    """Not the 0700 of its temporary name: a dataset on a shared file system is read by other users' jobs."""
    write_shards([make_sample(i) for i in range(3)], tmp_path / "out", shard_size=4)
    (tmp_path / "plain").mkdir()
    assert oct((tmp_path / "out").stat().st_mode & 0o777) == oct((tmp_path / "plain").stat().st_mode & 0o777)


def test_shards_are_byte_identical_across_runs(tmp_path: Path) -> None:
    for name in ("a", "b"):
        write_shards([make_sample(i) for i in range(7)], tmp_path / name, shard_size=3)
    for shard in sorted((tmp_path / "a").iterdir()):
        assert shard.read_bytes() == (tmp_path / "b" / shard.name).read_bytes()


def test_read_manifest_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        read_manifest(tmp_path / "missing")
    with pytest.raises(DataError, match=r"manifest\.json not found"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "other/1"}))
    with pytest.raises(DataError, match="format 'other/1' is not a shard-directory manifest") as err:
        read_manifest(tmp_path)
    assert "\n" not in str(err.value)


def test_empty_input_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no samples"):
        write_shards([], tmp_path / "out", shard_size=4)
    assert list(tmp_path.iterdir()) == []
