"""Published files: the download cache checks published digests, says where to put a file when offline, and
`alexnet weights import NAME` / `import torchvision` write weights with their metadata. No network is used:
downloads come from file:// URLs and torchvision's state dict is made locally."""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import replace

import onnx
import pytest
import torch

import alexnet
from alexnet.cli import main
from alexnet.errors import WeightsError
from alexnet.weights.sources import SOURCES, Source, cache_dir, fetch
from test_weights_onnx import ODD_CONVS, zoo_graph


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ALEXNET_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "weights"


@pytest.fixture
def published(tmp_path, monkeypatch):
    """A 'published' zoo-style file served from a file:// URL, with its SHA-256 registered as the digest."""
    path = tmp_path / "srv" / "tiny-8.onnx"
    path.parent.mkdir()
    onnx.save(zoo_graph(ODD_CONVS, [16, 10], opset=8), str(path))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    src = Source("tiny-8", "tiny-8.onnx", path.as_uri(), "auto", "sha256", digest, "test licence", "n/a")
    monkeypatch.setitem(SOURCES, "tiny-8", src)
    return src


def test_cache_folder_follows_the_environment(cache):
    assert cache_dir() == cache


def test_download_lands_in_the_cache_after_its_digest_is_checked(cache, published):
    path = fetch("tiny-8", progress=False)
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # as any file the process writes, not mkstemp's 0600
    assert path == cache / "tiny-8.onnx" and hashlib.sha256(path.read_bytes()).hexdigest() == published.digest
    assert fetch("tiny-8", progress=False) == path  # second call: from the cache


def test_a_file_with_the_wrong_digest_is_refused_and_not_kept(cache, published, monkeypatch):
    monkeypatch.setitem(SOURCES, "tiny-8", replace(published, digest="0" * 64))
    with pytest.raises(WeightsError, match=r"sha256 is [0-9a-f]{64}, the published tiny-8 has 0{64}"):
        fetch("tiny-8", progress=False)
    assert not any(cache.iterdir())


def test_offline_message_says_where_to_put_the_file(cache, published, monkeypatch):
    monkeypatch.setitem(SOURCES, "tiny-8", replace(published, url="http://127.0.0.1:9/tiny-8.onnx"))
    with pytest.raises(
        WeightsError, match=re.escape(f"offline, fetch it elsewhere and put it at {cache / 'tiny-8.onnx'}")
    ):
        fetch("tiny-8", progress=False, timeout=5)
    assert not (cache / "tiny-8.onnx").exists()


def test_every_published_digest_is_a_well_formed_hex_string():
    lengths = {"sha256": 64, "sha1": 40}
    for s in SOURCES.values():
        if s.digest is None:
            assert s.algorithm is None  # nothing published: nothing invented
        else:
            assert re.fullmatch(f"[0-9a-f]{{{lengths[s.algorithm]}}}", s.digest), s.digest


def test_cli_import_by_name_downloads_verifies_and_records_the_source(cache, published, tmp_path, capsys):
    out = tmp_path / "t.safetensors"
    assert main(["weights", "import", "tiny-8", "--out", str(out)]) == 0
    assert "exact to float32 rounding" in capsys.readouterr().out
    meta = alexnet.weights.read_weights(out)[1]
    assert meta.source.startswith("tiny-8 (file://") and meta.license == "test licence"
    assert meta.extra["onnx_sha256"] == published.digest


def test_cli_import_torchvision_writes_weights_with_full_metadata(tmp_path, monkeypatch, capsys):
    import torchvision

    import alexnet.weights.torchvision as tvw

    torch.manual_seed(0)
    tv = torchvision.models.alexnet().eval()
    monkeypatch.setattr(tvw, "fetch_torchvision_state_dict", lambda progress=True: tv.state_dict())
    out = tmp_path / "tv.safetensors"
    assert main(["weights", "import", "torchvision", "--out", str(out)]) == 0
    model = alexnet.create_model("alexnet_owt", weights=out).eval()
    meta = model.weights_meta
    assert meta.model == "alexnet_owt" and len(meta.classes) == 1000 and meta.extra["acc@1"] == 56.522
    assert meta.preprocessing.input_size == 224 and "BSD-3-Clause" in meta.license
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(model(x), tv(x))


def test_cli_sources_lists_digests_and_cache_state(cache, capsys):
    assert main(["weights", "sources"]) == 0
    text = capsys.readouterr().out
    assert f"cache: {cache}" in text
    assert (
        "bvlcalexnet-8" in text
        and "sha256 9a4dc22fd706a19462aaec3b08e027e0ef89daf63d123824f20b59b6de9a727b" in text
    )
    assert "zfnet512-12" in text and "no published digest" in text


def test_a_download_in_the_old_cache_place_moves_into_weights(cache, published, tmp_path, monkeypatch):
    import dataclasses

    old = cache.parent / "tiny-8.onnx"  # $ALEXNET_CACHE itself, where downloads went before
    old.parent.mkdir(parents=True, exist_ok=True)
    old.write_bytes((tmp_path / "srv" / "tiny-8.onnx").read_bytes())
    monkeypatch.setitem(SOURCES, "tiny-8", dataclasses.replace(published, url=(tmp_path / "gone").as_uri()))
    path = fetch("tiny-8", progress=False)  # no download: the URL now leads nowhere
    assert path == cache / "tiny-8.onnx" and path.is_file() and not old.exists()


def test_a_file_fetched_by_hand_is_placed_in_the_cache_whole_after_its_digest_is_checked(
    cache, published, tmp_path
):
    from alexnet.weights.sources import place

    by_hand = tmp_path / "downloads" / "tiny-8.onnx"
    by_hand.parent.mkdir()
    wrong = by_hand.with_name("other.onnx")
    wrong.write_bytes(b"not the published file")
    with pytest.raises(WeightsError):
        place("tiny-8", wrong)
    assert not cache.exists() or list(cache.iterdir()) == []  # nothing placed, no temporary file left
    by_hand.write_bytes((tmp_path / "srv" / "tiny-8.onnx").read_bytes())
    target = place("tiny-8", by_hand)
    assert target == cache / "tiny-8.onnx" and target.read_bytes() == by_hand.read_bytes()
    assert [p.name for p in cache.iterdir()] == ["tiny-8.onnx"]
