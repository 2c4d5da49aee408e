"""ONNX export: one standard node per paper layer, LRN as ONNX LRN with the convention converted, dynamic batch,
logits equal to PyTorch's in onnxruntime, metadata carried back on re-import."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import alexnet
from alexnet.cli import main
from alexnet.models import LRN, Fc, build_model, get_config, lrn_reference
from alexnet.weights.export import ExportError, build_onnx, export_onnx
from alexnet.weights.onnx import import_onnx


def small(name: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    return alexnet.create_model(name, num_classes=10, fcs=(Fc(32), Fc(32), Fc(None)), **overrides).eval()


def attrs(node) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


@pytest.mark.parametrize(
    ("name", "alpha", "bias"),
    [("alexnet", 1e-4 * 5, 2.0), ("caffenet", 1e-4, 1.0), ("zfnet", 1e-4 * 5, 2.0)],
)
def test_lrn_exports_as_onnx_lrn_in_onnx_convention(name, alpha, bias):
    """Paper convention k + α·Σx² becomes ONNX bias=k, alpha=α·size (ONNX divides alpha by size)."""
    proto = build_onnx(small(name))
    lrns = [n for n in proto.graph.node if n.op_type == "LRN"]
    assert [n.name for n in lrns] == ["norm1", "norm2"]
    a = attrs(lrns[0])
    assert a["size"] == 5 and a["beta"] == pytest.approx(0.75)
    assert a["alpha"] == pytest.approx(alpha, rel=1e-6) and a["bias"] == pytest.approx(bias)


def test_onnx_lrn_node_computes_the_papers_formula():
    """onnxruntime's LRN with the exported attributes equals AlexNet §3.3 written out (lrn_reference)."""
    proto = build_onnx(small("alexnet"))
    a = attrs(next(n for n in proto.graph.node if n.op_type == "LRN"))
    node = onnx.helper.make_node("LRN", ["x"], ["y"], **a)
    vi = onnx.helper.make_tensor_value_info
    graph = onnx.helper.make_graph(
        [node], "lrn", [vi("x", onnx.TensorProto.FLOAT, None)], [vi("y", onnx.TensorProto.FLOAT, None)]
    )
    m = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    x = torch.randn(2, 16, 5, 5) * 10
    (y,) = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x.numpy()}
    )
    torch.testing.assert_close(
        torch.from_numpy(y), lrn_reference(x, 5, 1e-4, 0.75, 2.0), rtol=1e-5, atol=1e-6
    )


def test_nodes_are_named_by_the_papers_and_dropout_is_left_out():
    proto = build_onnx(small("caffenet"))
    names = [n.name for n in proto.graph.node]
    assert names[:8] == ["conv1", "relu1", "pool1", "norm1", "conv2", "relu2", "pool2", "norm2"]
    assert "fc8" in names and not any(n.op_type == "Dropout" for n in proto.graph.node)
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param == "N" and [d.dim_value for d in dims[1:]] == [3, 227, 227]


@pytest.mark.parametrize("name", ["alexnet", "caffenet", "bvlc_alexnet", "alexnet_owt", "zfnet", "zfnet_b"])
def test_export_matches_pytorch_in_onnxruntime_for_any_batch(tmp_path, name):
    model = small(name)
    path = tmp_path / f"{name}.onnx"
    report = export_onnx(model, path)
    assert report.ok and report.batch == 3
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    size = model.default_input_size
    for batch in (1, 4):
        x = torch.randn(batch, 3, size, size)
        (theirs,) = session.run(["logits"], {"image": x.numpy()})
        with torch.no_grad():
            ours = model(x).numpy()
        np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-4 * np.abs(ours).max())


def test_export_then_import_gives_back_the_same_model_and_metadata(tmp_path):
    from alexnet.weights.io import WeightsMeta

    model = small("bvlc_alexnet", seed=3)
    meta = WeightsMeta(classes=[f"c{i}" for i in range(10)], source="unit test", license="MIT")
    model.weights_meta = meta
    export_onnx(model, tmp_path / "m.onnx")
    back, report, _ = import_onnx(tmp_path / "m.onnx", "auto")
    assert report is not None and report.ok
    assert back.config == model.config  # the recorded architecture, checked against the graph
    for key, tensor in model.state_dict().items():
        assert torch.equal(back.state_dict()[key], tensor), key
    assert back.weights_meta.classes == meta.classes and back.weights_meta.source == "unit test"
    pre = back.weights_meta.preprocessing  # none recorded: the ImageNet default at the model's input size
    assert pre is not None and pre.input_size == 227 and pre.channel_order == "RGB"


def test_weights_info_reads_an_onnx_file_by_structure_and_shows_what_its_import_would_record(
    tmp_path, capsys
):
    from alexnet.weights.io import WeightsMeta

    model = small("caffenet", seed=4)
    model.weights_meta = WeightsMeta(classes=[f"c{i}" for i in range(10)], source="unit test", license="MIT")
    export_onnx(model, tmp_path / "m.onnx")
    capsys.readouterr()
    assert main(["weights", "info", str(tmp_path / "m.onnx")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("file:           an ONNX graph; `alexnet weights import")
    params = sum(t.numel() for t in model.state_dict().values())
    assert lines[1] == f"model:          caffenet  (10 classes, {params:,} parameters)"
    assert "source:         unit test" in lines and "license:        MIT" in lines
    (tmp_path / "junk.onnx").write_text("not a graph")
    assert main(["weights", "info", str(tmp_path / "junk.onnx")]) == 2
    assert "not a readable ONNX model" in capsys.readouterr().err


def test_even_lrn_size_is_refused():
    model = small("alexnet", lrn=LRN(size=4, alpha=1e-4, beta=0.75, k=2.0))
    with pytest.raises(ExportError, match="LRN size 4 is even"):
        build_onnx(model)


def test_cli_export_takes_a_training_runs_folder_instead_of_weights(tmp_path, capsys):
    import onnx

    from alexnet.weights import save_weights

    weights = save_weights(build_model("caffenet", 10), tmp_path / "c.safetensors")
    out = tmp_path / "c.onnx"
    assert main(["export", "--weights", str(weights), "--out", str(out)]) == 0
    run = tmp_path / "run"  # a training run's folder: its final weights
    run.mkdir()
    (run / "model.safetensors").write_bytes(weights.read_bytes())
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "run.onnx")]) == 0
    initializers = [list(onnx.load(f).graph.initializer) for f in (out, tmp_path / "run.onnx")]
    assert initializers[0] == initializers[1]  # the same network (the metadata names the file it came from)
    capsys.readouterr()
    assert (
        main(["export", "--run", str(run), "--weights", str(weights), "--out", str(tmp_path / "y.onnx")]) == 2
    )
    assert "give --run or --weights, not both" in capsys.readouterr().err
    assert main(["export", "--out", str(tmp_path / "y.onnx")]) == 2
    assert "give --model NAME, --weights FILE or --run DIR" in capsys.readouterr().err


def test_cli_export_writes_a_checked_file_and_refuses_bad_arguments(tmp_path, capsys):
    from alexnet.weights import save_weights

    # An unregistered variant (narrow fc layers): the file's recorded config rebuilds it.
    narrow = build_model(
        get_config("caffenet").with_overrides(name="caffenet_narrow", fcs=(Fc(32), Fc(None))), 10
    )
    weights = save_weights(narrow, tmp_path / "c.safetensors")
    out = tmp_path / "c.onnx"
    assert main(["export", "--weights", str(weights), "--format", "onnx", "--out", str(out)]) == 0
    assert "exact to float32 rounding" in capsys.readouterr().out and out.is_file()
    assert main(["export", "--weights", str(weights), "--out", str(out)]) == 2  # exists, no --force
    assert (
        main(
            ["export", "--weights", str(tmp_path / "missing.safetensors"), "--out", str(tmp_path / "x.onnx")]
        )
        == 2
    )
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(line.startswith("alexnet: error: ") for line in err)
    assert "c.onnx exists; pass --force to overwrite it" in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.onnx", "c.safetensors"]
    (tmp_path / "folder.onnx").mkdir()  # --force would not help: named as a folder, not "exists"
    for force in ([], ["--force"]):
        assert (
            main(["export", "--weights", str(weights), "--out", str(tmp_path / "folder.onnx"), *force]) == 2
        )
        assert capsys.readouterr().err.strip().endswith("folder.onnx is a folder; give a file name")


def test_adaptive_pool_without_a_fixed_window_equivalent_is_refused():
    """alexnet_owt at 256 px reaches 7×7 before its 6×6 adaptive average pool: no AveragePool reproduces it."""
    with pytest.raises(ExportError, match="7→6 adaptive pooling has no fixed-window ONNX equivalent"):
        build_onnx(small("alexnet_owt"), input_size=256)


@pytest.mark.parametrize("opset", [9, onnx.defs.onnx_opset_version() + 1, 99])
def test_an_opset_outside_what_onnx_knows_is_refused_naming_the_range(opset):
    with pytest.raises(ExportError, match=f"opset {opset} is not supported: choose 10–"):
        build_onnx(small("alexnet"), opset=opset)


def test_an_opset_onnxruntime_cannot_run_is_one_line_naming_its_newest(tmp_path, monkeypatch):
    # An onnx newer than the onnxruntime beside it: the graph passes onnx's checker, onnxruntime refuses it.
    newest = onnx.defs.onnx_opset_version()
    monkeypatch.setattr(onnx.defs, "onnx_opset_version", lambda: newest + 50)
    with pytest.raises(ExportError, match=r"not supported by onnxruntime .*: choose 10–\d+$") as e:
        export_onnx(small("alexnet"), tmp_path / "m.onnx", opset=newest + 1)
    assert "\n" not in str(e.value)
    assert list(tmp_path.iterdir()) == []


def test_an_input_size_the_classifier_cannot_take_is_refused_before_export(tmp_path, capsys):
    from alexnet.weights import save_weights

    weights = save_weights(small("alexnet", input_size=99), tmp_path / "w99.safetensors")
    out = tmp_path / "m.onnx"
    assert main(["export", "--weights", str(weights), "--out", str(out), "--input-size", "227"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "input size 227: alexnet takes 99×99 images" in err
    assert not out.exists()


def test_cli_export_refuses_an_unknown_opset_with_one_line(tmp_path, capsys):
    out = tmp_path / "m.onnx"
    assert main(["export", "--model", "alexnet", "--out", str(out), "--opset", "99"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "opset 99 is not supported: choose 10–" in err
    assert not out.exists()


def test_an_ablated_network_exports_and_imports_back_with_its_paper_layer_names(tmp_path):
    """Without conv3 and fc7 the graph has four convs and two fc layers; they load back into conv1, conv2, conv4,
    conv5, fc6 and fc8, as the recorded architecture names them."""
    from alexnet.models import ablate

    torch.manual_seed(4)
    config = ablate(get_config("alexnet"), remove=("conv3", "fc7"), fc_width=32)
    model = build_model(config, num_classes=10).eval()
    export_onnx(model, tmp_path / "m.onnx")
    back, report, _ = import_onnx(tmp_path / "m.onnx", "auto")
    assert report is not None and report.ok
    assert back.config == model.config and back.config.ablation == "without conv3, fc7; fc6 32 wide"
    assert back.layer_names() == model.layer_names()
    for key, tensor in model.state_dict().items():
        assert torch.equal(back.state_dict()[key], tensor), key
