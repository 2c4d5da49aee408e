"""The layer-feature cache that retrieval (AlexNet Fig. 4) and the linear probe (ZF Table 7) read: shards that an
interrupted extraction goes on from, keyed by the weights, layers, preprocessing and listing."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

import alexnet
from alexnet.analysis import features
from alexnet.analysis.features import extract_features
from alexnet.errors import Interrupted


@pytest.fixture(scope="module")
def model() -> alexnet.models.AlexNetFamily:
    torch.manual_seed(0)
    return alexnet.create_model("alexnet_owt", init="pytorch").eval()


@pytest.mark.parametrize("stop", ["ctrl-c", "damaged shards"])
def test_an_interrupted_extraction_goes_on_from_its_saved_shards_to_the_same_features(
    model, gallery_dir: Path, tmp_path: Path, monkeypatch, ctrl_c_reaches_us, stop: str
) -> None:
    """Ctrl-C during the second shard: that shard is finished and saved, the extraction stops with exit code
    130, and the next call extracts only the third. A kill -9 leaves no shard half-written (atomic writes:
    tests/test_files.py kills a writer), but a shard damaged some other way is extracted again."""
    files = sorted((gallery_dir / "train").rglob("*.png"))
    straight = extract_features(model, files, shard=3)
    cache = tmp_path / "cache"
    real = features._extract
    calls: list[int] = []

    def counting(model, batches, chunks, *rest):
        calls.append(sum(b - a for a, b in chunks))  # the shard's images extracted
        if stop == "ctrl-c" and len(calls) == 2:
            os.kill(os.getpid(), signal.SIGINT)
        return real(model, batches, chunks, *rest)

    monkeypatch.setattr(features, "_extract", counting)
    if stop == "ctrl-c":
        with pytest.raises(Interrupted) as stopped:
            extract_features(model, files, cache_dir=cache, shard=3)
        (folder,) = cache.glob("relu7-*")
        assert stopped.value.exit_code == 130
        assert str(stopped.value) == (
            f"SIGINT: stopped after 6 of 8 images; their features are saved in {folder}: run the same "
            "command to go on from there"
        )
    else:
        extract_features(model, files, cache_dir=cache, shard=3)
        (folder,) = cache.glob("relu7-*")
        (folder / "000002.safetensors").write_bytes(b"\x00" * 40)  # a damaged last shard
        (folder / "000000.safetensors").write_bytes((folder / "000000.safetensors").read_bytes()[:-9])
    calls.clear()
    resumed = extract_features(model, files, cache_dir=cache, shard=3)
    assert calls == ([2] if stop == "ctrl-c" else [3, 2])  # only what was not saved whole
    torch.testing.assert_close(resumed.features, straight.features, rtol=0, atol=0)
    assert resumed.paths == straight.paths


def test_the_cache_never_mixes_shard_sizes_and_names_the_files_as_this_listing_does(
    model, gallery_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    """Shards cut another way are another cache; the same gallery reached by another relative path shares the
    cache (its key resolves the paths) and is named as this listing names it, with an unreadable file's place
    kept (the paths are never read from the cache)."""
    bad = gallery_dir / "train" / "class9" / "notes.png"
    bad.parent.mkdir(exist_ok=True)
    bad.write_text("not an image")
    try:
        files = sorted((gallery_dir / "train").rglob("*.png"))
        cache = tmp_path / "cache"
        by_three = extract_features(model, files, cache_dir=cache, shard=3)
        by_four = extract_features(model, files, cache_dir=cache, shard=4)
        assert len(list(cache.iterdir())) == 2
        assert by_four.paths == by_three.paths == [str(f) for f in files if f != bad]
        assert by_four.skipped == by_three.skipped == [str(bad)]
        torch.testing.assert_close(by_four.features, by_three.features)
        monkeypatch.chdir(gallery_dir)
        relative = [f.relative_to(gallery_dir) for f in files]
        monkeypatch.setattr(features, "_extract", lambda *a: pytest.fail("extracted again"))
        again = extract_features(model, relative, cache_dir=cache, shard=3)
        assert again.paths == [str(f) for f in relative if f != bad.relative_to(gallery_dir)]
        assert again.skipped == [str(bad.relative_to(gallery_dir))]
    finally:
        bad.unlink()
        bad.parent.rmdir()


def test_earlier_versions_caches_of_the_same_images_are_removed_and_never_read(
    model, gallery_dir: Path, tmp_path: Path
) -> None:
    """The one-file cache, and the shards of JPEGs decoded whole (before they were decoded as eval does)."""
    files = sorted((gallery_dir / "train").rglob("*.png"))
    keys = features.cache_keys(model, files, "relu7")
    assert keys[""] != keys[features.DECODING] == features.cache_key(model, files, "relu7")
    old = tmp_path / f"relu7-{keys['']}.safetensors"
    old.write_bytes(b"features of the one-file format")
    shards = tmp_path / f"relu7-{keys['']}-s{features.SHARD}"
    shards.mkdir()
    (shards / "000000.safetensors").write_bytes(b"features of whole-decoded JPEGs")
    other = tmp_path / "relu7-0123456789abcdef0123456789abcdef.safetensors"  # another gallery's: kept
    other.write_bytes(b"another gallery")
    extract_features(model, files, cache_dir=tmp_path)
    assert not old.exists() and not shards.exists() and other.exists()
    assert (tmp_path / f"relu7-{keys[features.DECODING]}-s{features.SHARD}" / "000000.safetensors").is_file()


def test_features_from_decoding_workers_are_the_features_of_one_process(
    model, gallery_dir: Path, tmp_path: Path
) -> None:
    """One loader runs ahead across the shards still to extract (the cached ones are not decoded again)."""
    files = sorted((gallery_dir / "train").rglob("*.png"))
    alone = extract_features(model, files, shard=3, batch_size=2)
    cache = tmp_path / "cache"
    extract_features(model, files[:3], cache_dir=cache, shard=3)  # another listing: another cache
    helped = extract_features(model, files, cache_dir=cache, shard=3, batch_size=2, workers=2)
    torch.testing.assert_close(helped.features, alone.features, rtol=0, atol=0)
    assert helped.paths == alone.paths
    again = extract_features(model, files, cache_dir=cache, shard=3, batch_size=2, workers=2)
    assert all(isinstance(b, Path) for b in again.blocks)  # every shard read back, none extracted
    torch.testing.assert_close(again.features, alone.features, rtol=0, atol=0)
