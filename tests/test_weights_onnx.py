"""ONNX import: zoo-layout graphs built here with onnx.helper (Caffe2 names, attribute styles of opsets 3–12,
Dropout nodes, Softmax at the end) are read by walking the graph, matched by structure and proven exact against
onnxruntime at the logits; mismatched or malformed files fail with one line, exit code 2 and no output file."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

import alexnet
from alexnet.cli import main
from alexnet.errors import WeightsError, WeightsMismatch
from alexnet.weights import load_pretrained, save_weights
from alexnet.weights.onnx import import_onnx, onnxruntime_logits, read_chain, verify

CAFFENET_CONVS = [  # out, kernel, stride, pad, group, norm, pool (Caffe's bvlc_reference_caffenet)
    (96, 11, 4, 0, 1, True, True),
    (256, 5, 1, 2, 2, True, True),
    (384, 3, 1, 1, 1, False, False),
    (384, 3, 1, 1, 2, False, False),
    (256, 3, 1, 1, 2, False, True),
]
# A ZFNet-like chain with widths no registered model has (the zoo's zfnet512 is the motivating case).
ODD_CONVS = [
    (24, 7, 2, 1, 1, True, True),
    (40, 5, 2, 0, 1, True, True),
    (56, 3, 1, 1, 1, False, False),
    (72, 3, 1, 1, 1, False, False),
    (48, 3, 1, 1, 1, False, True),
]


def zoo_graph(
    convs,
    fcs,
    *,
    opset=7,
    size=224,
    pool_before_norm=True,
    lrn=(5, 1e-4, 0.75, 1.0),
    style="gemm",
    seed=0,
):
    """A Caffe2→ONNX style AlexNet-family graph, written independently of the importer.

    Caffe's ceil-rounded pooling is written as the zoo does before opset 10: one extra row/column of end
    padding where floor rounding would lose a window; from opset 10 as ``ceil_mode=1``. ``style``: "gemm"
    (Reshape + Gemm, ``broadcast`` and Dropout ``is_test`` below opset 7, Reshape's ``shape`` attribute below
    opset 5), "matmul" (Flatten + MatMul + Add), "flatten" (Flatten + Gemm).
    """
    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def init(name, arr, dtype=np.float32):
        inits.append(numpy_helper.from_array(np.asarray(arr, dtype=dtype), name))
        return name

    cur, c_in, n = "data_0", 3, size
    for i, (out, k, s, p, g, norm, pool) in enumerate(convs, start=1):
        w = rng.standard_normal((out, c_in // g, k, k), dtype=np.float32) * np.sqrt(2 / (c_in // g * k * k))
        ins = [cur, init(f"conv{i}_w_0", w), init(f"conv{i}_b_0", rng.normal(0, 0.1, out))]
        conv_kw = dict(kernel_shape=[k, k], strides=[s, s], pads=[p] * 4, group=g)
        nodes.append(helper.make_node("Conv", ins, [f"conv{i}_1"], name=f"conv{i}", **conv_kw))
        nodes.append(helper.make_node("Relu", [f"conv{i}_1"], [f"conv{i}_2"], name=f"relu{i}"))
        cur, n, c_in = f"conv{i}_2", (n + 2 * p - k) // s + 1, out
        post = (["pool"] if pool else []) + (["norm"] if norm else [])
        if not pool_before_norm:
            post.reverse()
        for kind in post:
            if kind == "pool":
                floor_n, ceil_n = (n - 3) // 2 + 1, -(-(n - 3) // 2) + 1
                if opset >= 10:
                    kw = dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)
                else:
                    extra = ceil_n - floor_n
                    kw = dict(kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, extra, extra])
                nodes.append(helper.make_node("MaxPool", [cur], [f"pool{i}_1"], name=f"pool{i}", **kw))
                cur, n = f"pool{i}_1", ceil_n
            else:
                sz, a, be, kk = lrn
                nodes.append(
                    helper.make_node(
                        "LRN", [cur], [f"norm{i}_1"], name=f"norm{i}", size=sz, alpha=a, beta=be, bias=kk
                    )
                )
                cur = f"norm{i}_1"
    feat = c_in * n * n
    if style == "gemm" and opset < 5:
        nodes.append(helper.make_node("Reshape", [cur], ["OC2_DUMMY_0"], shape=[1, -1]))
    elif style == "gemm":
        nodes.append(
            helper.make_node("Reshape", [cur, init("OC2_DUMMY_1", [1, -1], np.int64)], ["OC2_DUMMY_0"])
        )
    elif style == "constant":  # the target shape from a Constant node rather than an initializer
        shape = numpy_helper.from_array(np.array([0, -1], dtype=np.int64))
        nodes.append(helper.make_node("Constant", [], ["flat_shape"], value=shape))
        nodes.append(helper.make_node("Reshape", [cur, "flat_shape"], ["OC2_DUMMY_0"]))
    else:
        nodes.append(helper.make_node("Flatten", [cur], ["OC2_DUMMY_0"], axis=1))
    cur = "OC2_DUMMY_0"
    for j, out in enumerate(fcs):
        idx = len(convs) + 1 + j
        w = rng.standard_normal((out, feat), dtype=np.float32) * np.float32(np.sqrt(2 / feat))
        b = rng.normal(0, 0.1, out)
        if style == "matmul":
            nodes.append(helper.make_node("MatMul", [cur, init(f"fc{idx}_w_0", w.T)], [f"fc{idx}_0"]))
            nodes.append(helper.make_node("Add", [f"fc{idx}_0", init(f"fc{idx}_b_0", b)], [f"fc{idx}_1"]))
        else:
            kw = dict(transB=1, broadcast=1) if opset < 7 else dict(transB=1)
            ins = [cur, init(f"fc{idx}_w_0", w), init(f"fc{idx}_b_0", b)]
            nodes.append(helper.make_node("Gemm", ins, [f"fc{idx}_1"], name=f"fc{idx}", **kw))
        cur = f"fc{idx}_1"
        if j < len(fcs) - 1:
            nodes.append(helper.make_node("Relu", [cur], [f"fc{idx}_2"], name=f"relu{idx}"))
            kw = dict(is_test=1) if opset < 7 else {}
            nodes.append(helper.make_node("Dropout", [f"fc{idx}_2"], [f"fc{idx}_3"], name=f"drop{idx}", **kw))
            cur = f"fc{idx}_3"
        feat = out
    nodes.append(helper.make_node("Softmax", [cur], ["softmaxout_1"], name="prob"))
    inputs = [helper.make_tensor_value_info("data_0", TensorProto.FLOAT, [1, 3, size, size])]
    inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits]  # as in IR 3
    outputs = [helper.make_tensor_value_info("softmaxout_1", TensorProto.FLOAT, [1, fcs[-1]])]
    model = helper.make_model(
        helper.make_graph(nodes, "zoo", inputs, outputs, inits),
        opset_imports=[helper.make_opsetid("", opset)],
        producer_name="onnx-caffe2",
    )
    model.ir_version = 3
    return model


def save(model, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def initializer(path: Path, name: str) -> torch.Tensor:
    m = onnx.load(str(path))
    return torch.from_numpy(
        next(numpy_helper.to_array(t) for t in m.graph.initializer if t.name == name).copy()
    )


@pytest.mark.slow
def test_full_size_zoo_caffenet_is_recognised_and_matches_onnxruntime_logits(tmp_path):
    """The zoo's caffenet layout at 224 px (ceil pooling as end padding, opset 7, Softmax last), 10 classes."""
    path = save(zoo_graph(CAFFENET_CONVS, [4096, 4096, 10]), tmp_path / "caffenet-7.onnx")
    model, report, chain = import_onnx(path, "auto")
    assert model.config.name == "caffenet" and model.num_classes == 10
    assert report is not None and report.ok and report.compared == "fc8_1"  # the logits, not the softmax
    assert chain.ends_in_softmax
    # Tensors were placed by walking the graph: conv2's (grouped) weight and fc6's are the file's, unchanged.
    assert torch.equal(model.layer("conv2").weight, initializer(path, "conv2_w_0"))
    assert torch.equal(model.layer("fc6").weight, initializer(path, "fc6_w_0"))


@pytest.mark.parametrize(
    ("opset", "style"),
    [(6, "gemm"), (7, "gemm"), (8, "matmul"), (9, "flatten"), (11, "constant"), (12, "gemm")],
)
def test_auto_reads_an_unregistered_chain_in_every_attribute_style(tmp_path, opset, style):
    path = save(
        zoo_graph(ODD_CONVS, [64, 48, 10], opset=opset, style=style), tmp_path / f"zfnet512-{opset}.onnx"
    )
    model, report, _ = import_onnx(path, "auto")
    cfg = model.config
    assert cfg.name == "zfnet512"
    assert [(c.out, c.kernel, c.stride, c.padding, c.groups, c.norm, c.pool) for c in cfg.convs] == [
        (o, k, s, p, g, n, q) for o, k, s, p, g, n, q in ODD_CONVS
    ]
    assert [f.out for f in cfg.fcs] == [64, 48, None] and cfg.num_classes == 10
    assert cfg.pool_before_norm and cfg.ceil_mode and cfg.input_size == 224
    assert cfg.lrn is not None and cfg.lrn.alpha_over_size and cfg.lrn.k == 1.0
    assert report is not None and report.relative < 1e-4


def test_softmax_graph_is_compared_at_the_logits_and_softmax_agrees(tmp_path):
    path = save(zoo_graph(ODD_CONVS, [64, 48, 10], opset=9), tmp_path / "z.onnx")
    model, _, chain = import_onnx(path, "auto")
    x = np.random.default_rng(5).normal(0, 64, (1, 3, 224, 224)).astype(np.float32)
    logits, name = onnxruntime_logits(path, x, chain)
    import onnxruntime as ort

    (probs,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"data_0": x})
    with torch.no_grad():
        ours = model(torch.from_numpy(x))
    assert name == "fc8_1"
    np.testing.assert_allclose(ours.numpy(), logits, rtol=1e-4, atol=1e-4 * np.abs(logits).max())
    np.testing.assert_allclose(ours.softmax(1).numpy(), probs, atol=1e-5)


def test_imported_weights_round_trip_through_safetensors_with_their_config_and_preprocessing(tmp_path):
    path = save(zoo_graph(ODD_CONVS, [64, 48, 10], opset=7), tmp_path / "zfnet512-7.onnx")
    model, _, _ = import_onnx(path, "auto")
    out = save_weights(model, tmp_path / "z.safetensors", model.weights_meta)
    again = load_pretrained(None, out)  # zfnet512 is not registered: rebuilt from the file's config
    assert again.config == model.config
    pre = again.weights_meta.preprocessing
    assert (pre.channel_order, pre.pixel_scale, pre.mean, pre.std, pre.input_size) == (
        "BGR",
        255.0,
        (104.0, 117.0, 123.0),
        (1.0, 1.0, 1.0),
        224,
    )
    assert "logits" in again.weights_meta.extra["note"]
    assert verify(path, again).ok


@pytest.mark.parametrize("model", ["caffenet", "auto"])
def test_a_graph_at_a_small_input_size_loads_into_the_named_model_at_that_size(tmp_path, model):
    """A 99-px graph gives fc6 a 2×2 pool5 map: the registered model is built at 99 px, not refused."""
    path = save(zoo_graph(CAFFENET_CONVS, [4096, 4096, 10], size=99), tmp_path / "small.onnx")
    net, report, _ = import_onnx(path, model)
    assert net.config.name == "caffenet" and net.config.input_size == 99
    assert report is not None and report.ok


def test_named_model_mismatch_names_the_node_and_both_values(tmp_path):
    dense_conv2 = [list(c) for c in CAFFENET_CONVS]
    dense_conv2[1][4] = 1
    path = save(zoo_graph([tuple(c) for c in dense_conv2], [16, 16, 10]), tmp_path / "c.onnx")
    with pytest.raises(
        WeightsMismatch, match=r"node 'conv2' \(Conv\) → conv2: group is 1, caffenet's conv2 has groups=2"
    ):
        import_onnx(path, "caffenet")


def test_lrn_and_layer_order_differences_are_reported(tmp_path):
    path = save(zoo_graph(CAFFENET_CONVS, [16, 16, 10]), tmp_path / "c.onnx")
    with pytest.raises(
        WeightsMismatch, match="pooling comes before LRN in the file; bvlc_alexnet pools after it"
    ):
        import_onnx(path, "bvlc_alexnet")
    with pytest.raises(WeightsMismatch, match=r"LRN bias \(k\) is 1, alexnet's LRN has 2"):
        import_onnx(path, "alexnet")
    with pytest.raises(
        WeightsMismatch, match=r"node 'fc6' \(Gemm\) → fc6: 16 outputs, caffenet's fc6 has 4096"
    ):
        import_onnx(path, "caffenet")


def test_even_lrn_window_and_asymmetric_conv_pads_are_refused(tmp_path):
    path = save(zoo_graph(ODD_CONVS, [16, 10], lrn=(4, 1e-4, 0.75, 1.0)), tmp_path / "even.onnx")
    with pytest.raises(WeightsMismatch, match="LRN size 4 is even"):
        import_onnx(path, "auto")
    m = zoo_graph(ODD_CONVS, [16, 10])
    conv = next(n for n in m.graph.node if n.op_type == "Conv")
    next(a for a in conv.attribute if a.name == "pads").ints[:] = [1, 1, 0, 0]
    with pytest.raises(WeightsMismatch, match=r"pads \[1, 1, 0, 0\] are not symmetric"):
        import_onnx(save(m, tmp_path / "asym.onnx"), "auto")


def test_branching_graph_is_not_a_chain(tmp_path):
    m = zoo_graph(ODD_CONVS, [16, 10])
    relu = m.graph.node[1]
    m.graph.node.insert(2, helper.make_node("Sigmoid", [relu.output[0]], ["side"], name="side"))
    with pytest.raises(WeightsError, match="Sigmoid"):
        read_chain(save(m, tmp_path / "b.onnx"))


def test_opset3_graph_is_read_and_onnxruntimes_limit_is_explained(tmp_path):
    path = save(zoo_graph(ODD_CONVS, [16, 10], opset=3), tmp_path / "z3.onnx")
    model, report, _ = import_onnx(path, "auto", check=False)
    assert report is None and [c.out for c in model.config.convs] == [24, 40, 56, 72, 48]
    with pytest.raises(WeightsError, match="onnxruntime runs opset 7 and later"):
        import_onnx(path, "auto")


# --- the command line -------------------------------------------------------------------------------------


def test_cli_import_then_verify_then_predict(tmp_path, capsys, chelsea_jpeg):
    onnx_path = save(zoo_graph(ODD_CONVS, [64, 48, 10], opset=8), tmp_path / "zfnet512-8.onnx")
    out = tmp_path / "z.safetensors"
    assert main(["weights", "import", str(onnx_path), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "zfnet512-8.onnx → zfnet512: max |Δlogit|" in text and "exact to float32 rounding" in text
    assert main(["weights", "verify", str(onnx_path), "--weights", str(out)]) == 0
    assert "exact to float32 rounding" in capsys.readouterr().out
    assert main(["predict", str(chelsea_jpeg), "--weights", str(out), "--topk", "2"]) == 0
    assert "class_" in capsys.readouterr().out
    assert main(["weights", "info", str(out)]) == 0
    assert '"channel_order": "BGR"' in capsys.readouterr().out


def test_cli_verify_fails_for_other_weights(tmp_path, capsys):
    onnx_path = save(zoo_graph(ODD_CONVS, [64, 48, 10], opset=8), tmp_path / "a.onnx")
    other, _, _ = import_onnx(save(zoo_graph(ODD_CONVS, [64, 48, 10], opset=8, seed=1), tmp_path / "b.onnx"))
    weights = save_weights(other, tmp_path / "b.safetensors", other.weights_meta)
    capsys.readouterr()
    assert main(["weights", "verify", str(onnx_path), "--weights", str(weights)]) == 2
    captured = capsys.readouterr()
    assert "MISMATCH" in captured.out and captured.err.count("\n") == 1


def test_cli_verify_with_weights_for_another_input_size_is_one_line(tmp_path, capsys):
    onnx_path = save(zoo_graph(CAFFENET_CONVS, [64, 48, 10], size=99), tmp_path / "small.onnx")
    weights = save_weights(alexnet.create_model("alexnet", num_classes=10), tmp_path / "a.safetensors")
    assert main(["weights", "verify", str(onnx_path), "--weights", str(weights)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the graph takes 99×99 images, but alexnet takes 227×227" in err


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty", "mismatch", "missing"])
def test_cli_bad_files_give_one_line_exit_2_and_no_output(tmp_path, capsys, damage):
    good = save(zoo_graph(ODD_CONVS, [16, 10], opset=8), tmp_path / "good.onnx")
    bad = tmp_path / "bad.onnx"
    model = "auto"
    if damage == "truncated":
        bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif damage == "garbage":
        bad.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    elif damage == "empty":
        bad.write_bytes(b"")
    elif damage == "mismatch":
        bad, model = good, "caffenet"
    out = tmp_path / "out.safetensors"
    assert main(["weights", "import", str(bad), "--model", model, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("alexnet: error: ") and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


@pytest.mark.parametrize(
    ("source", "flags", "message"),
    [
        ("torchvision", ["--rgb"], "--rgb goes with an .onnx or .caffemodel import, not with torchvision"),
        ("torchvision", ["--name", "x"], "--name goes with an .onnx or .caffemodel import"),
        ("{dir}/net.caffemodel", ["--no-verify"], "--no-verify goes with an .onnx import"),
        ("{dir}/net.caffemodel", ["--input-convention", "imagenet"], "--input-convention goes with an .onnx"),
        ("{dir}/good.onnx", ["--mean-file", "m.binaryproto"], "--mean-file goes with a .caffemodel import"),
        ("bvlcalexnet-6", ["--mean-file", "m.binaryproto"], "--mean-file goes with a .caffemodel import"),
        ("{dir}", [], "is a folder; give an .onnx or .caffemodel file"),
    ],
)
def test_cli_import_flags_that_do_not_apply_to_the_source_are_refused(
    tmp_path, capsys, source, flags, message
):
    """Checked before any download or conversion: a flag the import would ignore is one line, exit 2."""
    save(zoo_graph(ODD_CONVS, [16, 10], opset=8), tmp_path / "good.onnx")
    (tmp_path / "net.caffemodel").write_bytes(b"not read: refused first")
    out = tmp_path / "out.safetensors"
    args = ["weights", "import", source.format(dir=tmp_path), *flags, "--out", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not out.exists()


def test_cli_verify_of_a_folder_says_it_is_a_folder(tmp_path, capsys):
    weights = tmp_path / "w.safetensors"
    save_weights(alexnet.create_model("alexnet_owt"), weights)
    assert main(["weights", "verify", str(tmp_path), "--weights", str(weights)]) == 2
    assert "is a folder, not an ONNX file" in capsys.readouterr().err


def test_create_model_takes_an_onnx_file_directly(tmp_path, capsys, chelsea_jpeg):
    path = save(zoo_graph(ODD_CONVS, [64, 48, 10], opset=9), tmp_path / "zfnet512-9.onnx")
    model = alexnet.create_model("auto", weights=path)
    assert model.config.name == "zfnet512" and model.weights_meta.preprocessing.channel_order == "BGR"
    assert "exact to float32 rounding" in model.weights_meta.extra["onnxruntime_check"]
    with pytest.raises(WeightsMismatch, match="→ conv1: out_channels is 24, caffenet's conv1 has out=96"):
        alexnet.create_model("caffenet", weights=path)
    assert main(["predict", str(chelsea_jpeg), "--weights", str(path), "--model", "auto"]) == 0
    assert "class_" in capsys.readouterr().out


def test_weights_kept_in_onnx_external_data_load_and_a_missing_or_short_data_file_is_one_line(
    tmp_path, capsys
):
    """onnx.save(..., save_as_external_data=True) keeps the initializers in a second file beside the graph."""
    graph = zoo_graph(ODD_CONVS, [64, 48, 10], opset=9)
    whole = save(graph, tmp_path / "whole.onnx")
    split = tmp_path / "split"
    split.mkdir()
    onnx.save(
        graph, str(split / "z.onnx"), save_as_external_data=True, location="z.onnx.data", size_threshold=0
    )
    assert (split / "z.onnx").stat().st_size < 10_000 < (split / "z.onnx.data").stat().st_size
    model, report, _ = import_onnx(split / "z.onnx", "auto")
    assert report is not None and report.ok
    reference, _, _ = import_onnx(whole, "auto")
    for a, b in zip(model.state_dict().values(), reference.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    digests = model.weights_meta.extra["onnx_external_data_sha256"]  # the weights' file, not just the graph's
    assert digests == {"z.onnx.data": hashlib.sha256((split / "z.onnx.data").read_bytes()).hexdigest()}
    assert "onnx_external_data_sha256" not in reference.weights_meta.extra

    alone = tmp_path / "alone"
    alone.mkdir()
    shutil.copy(split / "z.onnx", alone / "z.onnx")
    out = tmp_path / "out.safetensors"
    assert main(["weights", "import", str(alone / "z.onnx"), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "its weights are stored in z.onnx.data (ONNX external data)" in err
    data = (split / "z.onnx.data").read_bytes()
    (alone / "z.onnx.data").write_bytes(data[: len(data) // 2])
    assert main(["weights", "import", str(alone / "z.onnx"), "-o", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "(ONNX external data) cannot be read" in err
    assert not out.exists()


def test_pooling_that_our_layers_cannot_reproduce_is_refused(tmp_path):
    m = zoo_graph(ODD_CONVS, [16, 10], opset=8)
    pool = next(n for n in m.graph.node if n.op_type == "MaxPool")
    next(a for a in pool.attribute if a.name == "pads").ints[:] = [1, 1, 1, 1]  # begin padding: not ours
    with pytest.raises(
        WeightsMismatch, match="pooling pads or sizes are not ones our architecture expresses"
    ):
        import_onnx(save(m, tmp_path / "p.onnx"), "auto")


def test_rgb_conversion_gives_the_same_logits_on_a_photo_and_still_verifies(tmp_path, chelsea, capsys):
    path = save(zoo_graph(ODD_CONVS, [64, 48, 10], opset=9), tmp_path / "z.onnx")
    bgr, _, _ = import_onnx(path, "auto")
    rgb, report, _ = import_onnx(path, "auto", rgb=True)
    assert report is not None and report.ok
    pre_b, pre_r = bgr.weights_meta.preprocessing, rgb.weights_meta.preprocessing
    assert pre_r.channel_order == "RGB" and pre_r.mean == (123.0, 117.0, 104.0)
    torch.testing.assert_close(rgb.layer("conv1").weight, bgr.layer("conv1").weight.flip(1))
    image = torch.from_numpy(chelsea).permute(2, 0, 1).float()[:, :224, :224] / 255
    with torch.no_grad():
        a, b = bgr(pre_b.normalize(image)[None]), rgb(pre_r.normalize(image)[None])
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4 * float(a.abs().max()))
    weights = save_weights(rgb, tmp_path / "rgb.safetensors", rgb.weights_meta)
    assert main(["weights", "verify", str(path), "--weights", str(weights)]) == 0  # flips its input for ours
    assert "exact to float32 rounding" in capsys.readouterr().out
