"""Weights files: safetensors with metadata round trip; .pth only with weights_only; torchvision's path."""

from __future__ import annotations

import os
import pickle
import stat
from pathlib import Path

import pytest
import torch

import alexnet
from alexnet.data.preprocess import Preprocessing
from alexnet.errors import OutputError, WeightsError, WeightsMismatch
from alexnet.files import atomic_write, new_file_mode
from alexnet.weights import WeightsMeta, load_pretrained, read_weights, save_weights


def test_safetensors_round_trip_keeps_tensors_and_metadata(tmp_path):
    m = alexnet.create_model("zfnet", num_classes=10)
    meta = WeightsMeta(
        classes=[str(i) for i in range(10)],
        preprocessing=Preprocessing(
            input_size=224, channel_order="BGR", pixel_scale=255.0, mean=(104, 117, 123), std=(1, 1, 1)
        ),
        source="test",
        tensors={"mean_image": torch.rand(3, 256, 256)},
    )
    path = save_weights(m, tmp_path / "z.safetensors", meta)
    m2 = alexnet.create_model("zfnet", weights=path)
    assert m2.num_classes == 10
    assert all(
        torch.equal(a, b) for a, b in zip(m.state_dict().values(), m2.state_dict().values(), strict=True)
    )
    got = m2.weights_meta
    assert got.model == "zfnet" and got.classes == meta.classes and got.preprocessing == meta.preprocessing
    assert torch.equal(got.tensors["mean_image"], meta.tensors["mean_image"])


def test_a_loaded_model_saved_again_keeps_its_metadata(tmp_path):
    """save_weights without meta writes what the model carries: a model reloaded from it is fed (preprocessing)
    and read (class names) as the original was; a fresh model carries none."""
    m = alexnet.create_model("caffenet", num_classes=3)
    assert m.weights_meta is None
    pre = Preprocessing(
        input_size=227, channel_order="BGR", pixel_scale=255.0, mean=(104, 117, 123), std=(1, 1, 1)
    )
    meta = WeightsMeta(classes=["a", "b", "c"], preprocessing=pre, source="test")
    first = alexnet.create_model(None, weights=save_weights(m, tmp_path / "1.safetensors", meta))
    again = alexnet.create_model(None, weights=save_weights(first, tmp_path / "2.safetensors"))
    assert (again.weights_meta.classes, again.weights_meta.preprocessing) == (["a", "b", "c"], pre)
    assert again.weights_meta.source == "test"


def test_reset_classifier_updates_the_loaded_weights_record(tmp_path):
    m = alexnet.create_model("caffenet", num_classes=3)
    path = save_weights(m, tmp_path / "c.safetensors", WeightsMeta(classes=["a", "b", "c"]))
    loaded = alexnet.create_model(None, weights=path)
    loaded.reset_classifier(5)  # fine-tuning: the file's class names no longer apply
    meta = loaded.weights_meta
    assert (meta.num_classes, meta.classes, meta.config["num_classes"]) == (5, None, 5)
    assert meta.meta["num_params"] == sum(p.numel() for p in loaded.parameters())


def test_a_feature_extractor_saved_without_its_classifier_loads_back(tmp_path):
    features = alexnet.create_model("alexnet", num_classes=0)
    back = alexnet.create_model(None, weights=save_weights(features, tmp_path / "f.safetensors"))
    assert back.num_classes == 0
    x = torch.rand(1, 3, 227, 227)
    with torch.no_grad():
        assert torch.equal(back.eval()(x), features.eval()(x)) and back(x).shape == (1, 4096)


def test_model_name_is_read_from_the_file(tmp_path):
    path = save_weights(alexnet.create_model("caffenet"), tmp_path / "c.safetensors")
    assert load_pretrained(None, path).config.name == "caffenet"


def test_save_is_atomic_and_leaves_no_temporary_files(tmp_path, monkeypatch):
    import safetensors.torch

    path = save_weights(alexnet.create_model("caffenet", num_classes=3), tmp_path / "a.safetensors")
    assert sorted(os.listdir(tmp_path)) == ["a.safetensors"]
    before = path.read_bytes()

    def cut_short(tensors, filename, metadata=None):  # a kill or a full disk halfway through the write
        Path(filename).write_bytes(before[: len(before) // 2])
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", cut_short)
    with pytest.raises(OutputError, match="No space left"):
        save_weights(alexnet.create_model("caffenet", num_classes=3), path)
    assert path.read_bytes() == before  # the file written before is whole
    assert sorted(os.listdir(tmp_path)) == ["a.safetensors"]


def test_written_files_get_the_umask_mode_or_keep_the_replaced_files_mode(tmp_path):
    old = os.umask(0o027)
    try:
        new_file_mode.cache_clear()
        path = atomic_write(tmp_path / "a.txt", lambda tmp: Path(tmp).write_text("1"))
        assert stat.S_IMODE(path.stat().st_mode) == 0o640  # not mkstemp's 0600
        path.chmod(0o604)
        atomic_write(path, lambda tmp: Path(tmp).write_text("2"))
        assert stat.S_IMODE(path.stat().st_mode) == 0o604 and path.read_text() == "2"
        # safetensors' save_file replaces the file it is given with a new 0600 one: the mode is set after it
        weights = save_weights(alexnet.create_model("alexnet_owt"), tmp_path / "w.safetensors")
        assert stat.S_IMODE(weights.stat().st_mode) == 0o640
    finally:
        os.umask(old)
        new_file_mode.cache_clear()


def test_an_output_path_that_cannot_be_written_is_a_clear_error_and_leaves_nothing(tmp_path):
    (tmp_path / "afile").write_text("x")
    with pytest.raises(OutputError, match=r"cannot write .*x\.txt: .*afile is not a folder"):
        atomic_write(tmp_path / "afile" / "sub" / "x.txt", lambda tmp: Path(tmp).write_text("1"))
    with pytest.raises(OutputError, match="Is a directory"):
        atomic_write(tmp_path, lambda tmp: Path(tmp).write_text("1"))

    def disk_full(tmp: str) -> None:
        Path(tmp).write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(OutputError, match="No space left on device"):
        atomic_write(tmp_path / "y.txt", disk_full)
    assert sorted(os.listdir(tmp_path)) == ["afile"]


def test_pth_state_dict_is_read_without_unpickling_code(tmp_path):
    import torchvision

    sd = torchvision.models.alexnet().state_dict()
    torch.save(sd, tmp_path / "tv.pth")
    m = alexnet.create_model("alexnet_owt", weights=tmp_path / "tv.pth")
    assert torch.equal(m.state_dict()["features.0.weight"], sd["features.0.weight"])


def test_a_bare_state_dict_loads_into_the_one_model_its_tensors_fit_and_an_ambiguous_one_is_named(tmp_path):
    import torchvision

    sd = torchvision.models.alexnet(num_classes=7).state_dict()
    torch.save(sd, tmp_path / "tv.pth")
    m = alexnet.create_model(None, weights=tmp_path / "tv.pth")  # `alexnet predict --weights tv.pth`
    assert m.config.name == "alexnet_owt" and m.num_classes == 7
    assert all(torch.equal(m.state_dict()[k], v) for k, v in sd.items())
    torch.save(alexnet.create_model("zfnet_b", num_classes=3).state_dict(), tmp_path / "zb.pth")
    assert alexnet.create_model(None, weights=tmp_path / "zb.pth").config.name == "zfnet_b"

    # the paper's AlexNet, CaffeNet and BVLC's AlexNet differ in layer order and LRN constants, not in shapes
    torch.save(alexnet.create_model("caffenet").state_dict(), tmp_path / "c.pth")
    with pytest.raises(WeightsError, match="its tensors fit alexnet, caffenet, bvlc_alexnet; name the model"):
        alexnet.create_model(None, weights=tmp_path / "c.pth")
    assert alexnet.create_model("caffenet", weights=tmp_path / "c.pth").config.name == "caffenet"
    sd["extra.weight"] = torch.zeros(2)  # a tensor no model has
    torch.save(sd, tmp_path / "more.pth")
    with pytest.raises(WeightsError, match="its tensors fit no registered model"):
        alexnet.create_model(None, weights=tmp_path / "more.pth")


def test_save_weights_refuses_a_name_that_promises_torch_save_format(tmp_path):
    with pytest.raises(OutputError, match=r"writes safetensors; name the file \.safetensors"):
        save_weights(alexnet.create_model("caffenet", num_classes=3), tmp_path / "m.pth")
    assert list(tmp_path.iterdir()) == []


def test_weights_are_read_by_their_content_not_their_name(tmp_path):
    model = alexnet.create_model("caffenet", num_classes=3)
    state = model.state_dict()
    save_weights(model, tmp_path / "m.safetensors").rename(tmp_path / "renamed.pth")
    torch.save(state, tmp_path / "saved.safetensors")
    for name in ("renamed.pth", "saved.safetensors"):
        loaded = alexnet.create_model("caffenet", num_classes=3, weights=tmp_path / name)
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in state.items()), name
    assert read_weights(tmp_path / "renamed.pth")[1].model == "caffenet"  # the metadata came along


def test_a_safetensors_file_whose_header_length_starts_like_a_pickle_is_read_as_safetensors(tmp_path):
    from safetensors.torch import save_file

    path, x = tmp_path / "w.safetensors", torch.arange(6.0)
    # the header's length is a multiple of 8: find the metadata that makes its low byte 0x80
    for pad in range(300):
        save_file({"x": x}, str(path), metadata={"pad": "p" * pad})
        if path.read_bytes()[0] == 0x80:
            break
    assert path.read_bytes()[0] == 0x80  # the first byte of a pickle (protocol ≥ 2)
    state, _ = read_weights(path)
    assert torch.equal(state["x"], x)


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/alexnet-pwned",))


def test_pickle_with_code_is_refused(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"x": Evil()}, f)
    with pytest.raises(WeightsError, match="not a loadable PyTorch weights file"):
        read_weights(path)
    assert not Path("/tmp/alexnet-pwned").exists()


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"hello, not a pickle", "neither a pickle nor a zip archive"),
        (pickle.dumps({"f": os.system}), "Python objects other than tensors, which are never unpickled"),
    ],
)
def test_a_pth_that_is_not_a_state_dict_is_one_short_line(tmp_path, content, says):
    path = tmp_path / "x.pth"
    path.write_bytes(content)
    with pytest.raises(WeightsError, match=says) as e:
        read_weights(path)
    assert "\n" not in str(e.value) and "weights_only" not in str(e.value)  # no advice to load it unsafely


def test_a_whole_pickled_model_is_refused_naming_its_class_and_what_to_save_instead(tmp_path, capsys):
    """torch.save(model) pickles the module's class; torch's refusal then advises allow-listing it."""
    import torchvision

    path = tmp_path / "whole.pth"
    torch.save(torchvision.models.alexnet(), path)
    with pytest.raises(WeightsError) as e:
        read_weights(path)
    message = str(e.value)
    assert "(a pickled torchvision.models.alexnet.AlexNet), which are never unpickled" in message
    assert "torch.save(model.state_dict(), path)" in message
    assert "safe_globals" not in message and "trust" not in message and "\n" not in message


def test_a_weights_file_that_cannot_be_read_says_so_not_missing(tmp_path, monkeypatch):
    path = save_weights(alexnet.create_model("alexnet_owt"), tmp_path / "a.safetensors")
    real_open = Path.open

    def refuse(self, *args, **kwargs):
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real_open(self, *args, **kwargs)

    monkeypatch.setattr(Path, "open", refuse)
    with pytest.raises(WeightsError, match="cannot read the weights file \\(Permission denied\\)"):
        read_weights(path)


def test_wrong_model_for_file_is_refused(tmp_path):
    path = save_weights(alexnet.create_model("zfnet"), tmp_path / "z.safetensors")
    with pytest.raises(WeightsMismatch, match="holds weights for model 'zfnet', not 'alexnet'"):
        alexnet.create_model("alexnet", weights=path)


def test_torchvision_weights_path_loads_a_state_dict(monkeypatch):
    """The same code path as weights="torchvision", with a state dict made locally instead of downloaded."""
    import torchvision

    import alexnet.weights.torchvision as tvw

    torch.manual_seed(3)
    tv = torchvision.models.alexnet().eval()
    monkeypatch.setattr(tvw, "fetch_torchvision_state_dict", lambda progress=True: tv.state_dict())
    m = alexnet.create_model("alexnet_owt", weights="torchvision").eval()
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.equal(m(x), tv(x))
    assert m.weights_meta.classes[0] == "tench" and len(m.weights_meta.classes) == 1000
    assert m.weights_meta.preprocessing.input_size == 224


def test_torchvision_weights_do_not_fit_other_models():
    with pytest.raises(WeightsMismatch, match="fit alexnet_owt, not alexnet"):
        alexnet.create_model("alexnet", weights="torchvision")
