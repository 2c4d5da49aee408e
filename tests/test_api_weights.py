"""The Python API's weights: torchvision's download gives up on a stalled network; torchvision-style ``weights=``
values; the weights metadata as torchvision's ``weights.transforms()`` / ``weights.meta``. No network is used:
downloads come from file:// URLs or a local socket that never answers."""

from __future__ import annotations

import hashlib
import socket
import threading
import time
from collections.abc import Iterator

import pytest
import torch

import alexnet
import alexnet.weights.torchvision as tvw
from alexnet.errors import WeightsError


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """torch.hub's cache in tmp_path (TORCH_HOME, and no set_dir() from elsewhere): its checkpoints folder."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    assert torch.hub.get_dir() == str(tmp_path / "torch" / "hub")
    return tmp_path / "torch" / "hub" / "checkpoints"


def _stalled_server(answer: bytes) -> Iterator[str]:
    """A local server that accepts, sends ``answer`` (maybe nothing) and then never another byte."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    held: list[socket.socket] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            held.append(conn)
            conn.sendall(answer)

    threading.Thread(target=serve, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.getsockname()[1]}/alexnet-owt-7be5be79.pth"
    finally:
        srv.close()
        for conn in held:
            conn.close()


@pytest.fixture(params=["no answer", "stalls mid-file"])
def stalled_url(request):
    answer = (
        b""
        if request.param == "no answer"
        else b"HTTP/1.0 200 OK\r\nContent-Length: 1000000\r\n\r\n" + b"x" * 5000
    )
    yield from _stalled_server(answer)


def test_torchvision_weights_url_is_torchvisions():
    from torchvision.models import AlexNet_Weights

    assert AlexNet_Weights.IMAGENET1K_V1.url == tvw.URL


def test_torchvision_download_gives_up_on_a_stalled_network_and_leaves_no_partial_file(
    hub, stalled_url, monkeypatch
):
    monkeypatch.setattr(tvw, "URL", stalled_url)
    monkeypatch.setattr(tvw, "TIMEOUT", 0.5)  # 30 s in real use
    start = time.monotonic()
    with pytest.raises(WeightsError) as e:
        alexnet.create_model("alexnet_owt", weights="torchvision")
    assert time.monotonic() - start < 10
    assert "no answer for 0.5 s" in str(e.value)
    assert f"offline, place alexnet-owt-7be5be79.pth in {hub}/" in str(e.value)
    assert list(hub.iterdir()) == []  # no .partial file, no truncated .pth


def _published(tmp_path, state: dict[str, torch.Tensor], digest: str | None = None) -> str:
    """``state`` saved as a file named like torchvision's (``alexnet-owt-<sha256 prefix>.pth``), as a file:// URL."""
    src = tmp_path / "srv" / "x.pth"
    src.parent.mkdir()
    torch.save(state, src)
    prefix = digest or hashlib.sha256(src.read_bytes()).hexdigest()[:8]
    named = src.rename(src.with_name(f"alexnet-owt-{prefix}.pth"))
    return named.as_uri()


def test_torchvision_download_lands_in_torch_hubs_cache_and_is_read_from_there_next_time(
    hub, tmp_path, monkeypatch
):
    state = {"features.0.bias": torch.arange(4.0)}
    url = _published(tmp_path, state)
    monkeypatch.setattr(tvw, "URL", url)
    got = tvw.fetch_torchvision_state_dict(progress=False)
    assert torch.equal(got["features.0.bias"], state["features.0.bias"])
    assert [p.name for p in hub.iterdir()] == [url.rsplit("/", 1)[1]]
    (tmp_path / "srv" / url.rsplit("/", 1)[1]).unlink()  # the second call cannot download
    assert torch.equal(tvw.fetch_torchvision_state_dict(progress=False)["features.0.bias"], torch.arange(4.0))


def test_torchvision_download_with_a_hash_other_than_its_name_says_is_refused_and_not_kept(
    hub, tmp_path, monkeypatch
):
    monkeypatch.setattr(tvw, "URL", _published(tmp_path, {"w": torch.ones(2)}, digest="00000000"))
    with pytest.raises(WeightsError, match="does not start with 00000000 as its name says"):
        tvw.fetch_torchvision_state_dict(progress=False)
    assert list(hub.iterdir()) == []


def test_a_corrupt_cached_torchvision_file_is_named_in_the_error(hub):
    hub.mkdir(parents=True)
    (hub / "alexnet-owt-7be5be79.pth").write_bytes(b"truncated")
    with pytest.raises(WeightsError, match=r"alexnet-owt-7be5be79\.pth: not torchvision's AlexNet weights"):
        alexnet.create_model("alexnet_owt", weights="torchvision")
