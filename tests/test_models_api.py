"""The models as torchvision and timm users drive them: autograd's other modes (forward-mode, ``torch.func``,
double backward), hooks, FX feature extraction, ONNX export, and timm's classifier conveniences."""

from __future__ import annotations

import os

import pytest
import torch
import torchvision
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import alexnet
from alexnet.errors import InputSizeError, ModelNotFound, ModelOptionError
from test_lrn_fast import reference_copy

LRN_MODELS = ["alexnet", "caffenet", "zfnet"]  # relu → norm → pool, and relu → pool → norm


def small(name: str, **kw: object) -> alexnet.models.AlexNetFamily:
    """A model at a small input size (a 1×1 or 2×2 pool5), in float64 so that only formulations differ."""
    size = {"alexnet": 67, "caffenet": 67, "zfnet": 63}[name]
    torch.manual_seed(0)
    model = alexnet.create_model(name, num_classes=10, input_size=size, **kw).double().eval()
    with torch.no_grad():  # activations large enough for the LRN to matter
        for p in model.parameters():
            p.mul_(4.0)
    return model


def image(model: torch.nn.Module, n: int = 2) -> torch.Tensor:
    s = model.default_input_size
    return torch.randn(n, 3, s, s, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 20


@pytest.mark.parametrize("name", LRN_MODELS)
def test_forward_mode_derivatives_equal_finite_differences(name: str) -> None:
    model = small(name)
    x = image(model, 1)
    v = torch.randn_like(x)
    eps = 1e-6
    with torch.no_grad():
        fd = (model(x + eps * v) - model(x - eps * v)) / (2 * eps)
    _, jvp = torch.func.jvp(model, (x,), (v,))
    torch.testing.assert_close(jvp, fd, rtol=1e-4, atol=1e-9)
    import torch.autograd.forward_ad as fwAD

    with torch.no_grad(), fwAD.dual_level():  # the fused kernels would drop the tangent
        tangent = fwAD.unpack_dual(model(fwAD.make_dual(x, v))).tangent
    assert tangent is not None
    torch.testing.assert_close(tangent, fd, rtol=1e-4, atol=1e-9)


@pytest.mark.parametrize("name", LRN_MODELS)
def test_torch_func_per_sample_gradients_equal_one_backward_per_image(name: str) -> None:
    model = small(name)
    x, y = image(model, 3), torch.tensor([1, 4, 7])
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p: dict, xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        out = torch.func.functional_call(model, p, (xi[None],))
        return torch.nn.functional.cross_entropy(out, yi[None])

    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0, 0))(params, x, y)
    for i in range(3):
        model.zero_grad()
        torch.nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1]).backward()
        for k, p in model.named_parameters():
            torch.testing.assert_close(per_sample[k][i], p.grad, rtol=1e-7, atol=1e-12, msg=k)
    # an input Jacobian by reverse mode agrees with forward mode along a direction
    v = torch.randn_like(x[:1])
    jacobian = torch.func.jacrev(model)(x[:1])  # 1×10×1×3×H×W
    _, jvp = torch.func.jvp(model, (x[:1],), (v,))
    torch.testing.assert_close((jacobian * v[None]).flatten(2).sum(-1), jvp, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("name", LRN_MODELS)
def test_torch_func_grad_over_the_parameters_of_a_plain_image_equals_backward(name: str) -> None:
    """The image is a plain float32 channels-last batch (what the fast paths take); only the parameters are
    wrapped by ``torch.func.grad``: the model must still see the transform and run its modules."""
    model = small(name).float().to(memory_format=torch.channels_last)
    x = image(model, 2).float().contiguous(memory_format=torch.channels_last)
    y = torch.tensor([1, 4])
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p: dict) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(torch.func.functional_call(model, p, (x,)), y)

    got = torch.func.grad(loss)(params)
    torch.nn.functional.cross_entropy(model(x), y).backward()  # the fast paths' gradients
    for k, p in model.named_parameters():
        scale = p.grad.abs().max()
        torch.testing.assert_close(got[k] / scale, p.grad / scale, rtol=0, atol=1e-4, msg=k)


@pytest.mark.parametrize("fuse", ["1", "0"])
@pytest.mark.parametrize("name", LRN_MODELS)
def test_gradient_penalty_double_backward_equals_the_literal_formula(
    name: str, fuse: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ALEXNET_FUSE", fuse)
    model = small(name).to(memory_format=torch.channels_last)
    ref = reference_copy(model)  # the literal LRN (AlexNet §3.3) through autograd, out-of-place ReLUs
    x = image(model).contiguous(memory_format=torch.channels_last)
    grads = []
    for m in (model, ref):
        xi = x.clone().requires_grad_()
        (g,) = torch.autograd.grad(m(xi)[:, 3].sum(), xi, create_graph=True)
        g.square().sum().backward()  # a gradient penalty on the image (WGAN-GP, double backprop)
        # fc8's bias does not move the image gradient: no gradient on either side
        grads.append({k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None})
        m.zero_grad()
    assert grads[0].keys() == grads[1].keys() and "features.0.weight" in grads[0]
    for k in grads[1]:
        scale = grads[1][k].abs().max().clamp(min=1e-30)
        torch.testing.assert_close(grads[0][k] / scale, grads[1][k] / scale, rtol=0, atol=1e-8, msg=k)


def test_second_derivative_through_a_fused_norm_after_pool_stage_says_how_to_get_it() -> None:
    model = small("zfnet").to(memory_format=torch.channels_last)  # relu → pool → norm keeps no conv output
    x = image(model).contiguous(memory_format=torch.channels_last)  # the image needs no gradient: fused path
    loss = model(x)[:, 3].sum()
    with pytest.raises(RuntimeError, match="ALEXNET_FUSE=0"):  # a gradient with a graph, through the stage
        torch.autograd.grad(loss, model.layer("conv1").weight, create_graph=True)


@pytest.mark.parametrize(("name", "layer"), [("alexnet", "relu1"), ("caffenet", "pool1"), ("zfnet", "pool2")])
def test_a_hook_keeps_the_output_of_the_layer_before_an_lrn_in_inference(name: str, layer: str) -> None:
    model = small(name)
    kept: dict[str, torch.Tensor] = {}
    model.layer(layer).register_forward_hook(lambda m, i, o: kept.update(out=o, copy=o.clone()))
    with torch.inference_mode():
        model(image(model))
    assert torch.equal(kept["out"], kept["copy"])  # no LRN wrote over it afterwards


@pytest.mark.parametrize("name", alexnet.list_models())
def test_torchvision_feature_extraction_traces_every_model(name: str) -> None:
    model = alexnet.create_model(name, num_classes=10).eval()
    _, nodes = get_graph_node_names(model)
    assert "x" in nodes and any(n.startswith("classifier.") for n in nodes)
    extractor = create_feature_extractor(model, {"features.1": "relu1", "classifier": "logits"})
    x = torch.randn(2, 3, model.default_input_size, model.default_input_size)
    with torch.no_grad():
        got, logits = extractor(x), model(x)
        relu1 = model.features[:2](x)
    torch.testing.assert_close(got["logits"], logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(got["relu1"], relu1)
    assert not model.training  # the model's mode is its own again


def test_alexnet_owt_features_extract_as_torchvision_alexnet_does() -> None:
    ours = alexnet.create_model("alexnet_owt").eval()
    tv = torchvision.models.alexnet().eval()
    tv.load_state_dict(ours.state_dict())
    nodes = {"features.0": "conv1", "features.3": "conv2", "classifier.6": "fc8"}
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        a, b = create_feature_extractor(ours, nodes)(x), create_feature_extractor(tv, nodes)(x)
    assert all(torch.equal(a[k], b[k]) for k in nodes.values())


@pytest.mark.parametrize("name", LRN_MODELS)
def test_torch_onnx_export_writes_one_lrn_node_per_lrn_and_runs_in_onnxruntime(name: str, tmp_path) -> None:
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    model = alexnet.create_model(name).eval()
    x = torch.randn(2, 3, model.default_input_size, model.default_input_size)
    path = tmp_path / "m.onnx"
    torch.onnx.export(model, (x,), path, dynamo=False, input_names=["x"])
    ops = [n.op_type for n in onnx.load(path).graph.node]
    assert ops.count("LRN") == 2 and not any("alexnet" in op for op in ops)
    got = ort.InferenceSession(str(path)).run(None, {"x": x.numpy()})[0]
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(got), model(x), rtol=1e-4, atol=1e-5)


def test_forward_features_keeps_the_callers_memory_format() -> None:
    model = alexnet.create_model("alexnet").eval()
    x = torch.randn(2, 3, 227, 227)
    with torch.no_grad():
        nchw = model.forward_features(x)
        cl = model.forward_features(x.contiguous(memory_format=torch.channels_last))
    assert nchw.is_contiguous() and nchw.view(2, -1).shape == (2, 9216)
    assert cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(nchw, cl)


def test_num_classes_zero_returns_fc7_features_as_timm_does() -> None:
    model = alexnet.create_model("alexnet", num_classes=0).eval()
    assert model.num_classes == 0 and isinstance(model.get_classifier(), torch.nn.Identity)
    x = torch.randn(2, 3, 227, 227)
    with torch.no_grad():
        feats = model(x)
        assert feats.shape == (2, model.num_features) == (2, 4096)
        torch.testing.assert_close(feats, model.forward_head(model.forward_features(x), pre_logits=True))


def test_reset_classifier_replaces_only_fc8_with_the_papers_init() -> None:
    model = alexnet.create_model("alexnet").eval()
    fc7 = model.layer("fc7").weight.clone()
    model.reset_classifier(37)
    fc8 = model.get_classifier()
    assert isinstance(fc8, torch.nn.Linear) and fc8.out_features == 37 and model.num_classes == 37
    assert model.config.num_classes == 37 and model.layer("fc8") is fc8
    assert torch.equal(model.layer("fc7").weight, fc7)
    assert fc8.weight.std().item() == pytest.approx(0.01, rel=0.05)  # N(0, 0.01), AlexNet §5
    assert torch.all(fc8.bias == 0)  # fc8's bias is 0 (§5: biases 1 only in conv2, conv4, conv5 and fc6, fc7)
    x = torch.randn(1, 3, 227, 227)
    with torch.no_grad():
        assert model(x).shape == (1, 37)
        pre = model.forward_head(model.forward_features(x), pre_logits=True)
        torch.testing.assert_close(model(x), fc8(pre))


@pytest.mark.parametrize("bad", [-1, "10", True, 2.5])
def test_a_bad_num_classes_is_one_clear_error(bad: object) -> None:
    with pytest.raises(ModelOptionError, match="num_classes must be a whole number"):
        alexnet.create_model("alexnet", num_classes=bad)
    with pytest.raises(ModelOptionError, match="num_classes must be a whole number"):
        alexnet.create_model("alexnet").reset_classifier(bad)


def test_an_input_too_small_for_the_trunk_is_refused_by_name() -> None:
    with pytest.raises(InputSizeError, match="smallest input is 39 px"):
        alexnet.create_model("alexnet", input_size=32)
    with pytest.raises(InputSizeError, match=r"32×32 image.*smallest side is 39 px"):
        alexnet.create_model("alexnet")(torch.randn(1, 3, 32, 32))
    model = alexnet.create_model("alexnet", input_size=39)  # enough: a ceil-mode pool window hangs over
    assert model(torch.randn(1, 3, 39, 39)).shape == (1, 1000)


@pytest.mark.parametrize(
    ("x", "says"),
    [
        (torch.rand(99, 99), "takes N×C×H×W image batches .* not a 2-D tensor"),
        (torch.rand(2, 1, 3, 99, 99), "not a 5-D tensor"),
        (torch.rand(1, 1, 99, 99), "takes 3-channel images; this input has 1 channels"),
        (torch.zeros(1, 3, 99, 99, dtype=torch.uint8), "takes float images.*transforms.*not torch.uint8"),
    ],
)
def test_an_input_that_is_not_an_image_batch_is_refused_with_what_to_do(x, says) -> None:
    model = alexnet.create_model("alexnet", num_classes=4, input_size=99).eval()
    with pytest.raises(InputSizeError, match=says):
        model(x)


def test_one_unbatched_image_gives_its_logits_as_nn_conv2d_takes_one() -> None:
    torch.manual_seed(0)
    model = alexnet.create_model("caffenet", num_classes=4, input_size=99).eval()
    x = torch.rand(2, 3, 99, 99)
    with torch.no_grad():
        one = model(x[1])
        assert one.shape == (4,)  # a batch of one and of two block the products apart: float32 rounding
        torch.testing.assert_close(one, model(x)[1], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("typo", "meant"), [("alexnt", "alexnet"), ("AlexNet", "alexnet"), ("zfnet-b", "zfnet_b")]
)
def test_an_unknown_model_name_suggests_the_nearest(typo, meant) -> None:
    with pytest.raises(
        ModelNotFound, match=f"unknown model '{typo}'; did you mean '{meant}'\\? choose one of"
    ):
        alexnet.create_model(typo)
    with pytest.raises(ModelNotFound, match="unknown model 'vgg'; choose one of"):  # nothing close: no guess
        alexnet.create_model("vgg")


@pytest.mark.parametrize("size", [0, -5, 224.0, True])
def test_summarize_refuses_an_input_size_that_is_not_a_pixel_count(size) -> None:
    from alexnet.analysis.summary import summarize

    with pytest.raises(InputSizeError, match="input size must be a whole number of pixels"):
        summarize(alexnet.create_model("alexnet"), size)


def test_registry_lists_filters_and_finds_models_as_timm_and_torchvision_do() -> None:
    assert alexnet.list_models("zf*") == ["zfnet", "zfnet_b"]
    assert set(alexnet.list_models(pretrained=True)) == {"alexnet_owt", "bvlc_alexnet", "caffenet"}
    assert alexnet.get_model is alexnet.create_model
    with pytest.raises(ModelNotFound, match="no published weights for 'alexnet'"):
        alexnet.create_model("alexnet", pretrained=True)
    with pytest.raises(ModelNotFound, match="a model name is a string"):
        alexnet.create_model(None)  # without weights there is no file to name the model
    with pytest.raises(TypeError, match="not both"):
        alexnet.create_model("alexnet_owt", weights="torchvision", pretrained=True)


def test_fast_paths_stay_on_in_plain_training_and_inference() -> None:
    # the checks above must not cost the fused kernels their ordinary calls (docs/performance.md)
    from alexnet.models import fused

    if os.environ.get("ALEXNET_FUSE") == "0" or alexnet.models.native.kernel() is None:
        pytest.skip("the C++ kernels are off or not built")
    model = alexnet.create_model("alexnet").to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 227, 227).contiguous(memory_format=torch.channels_last)
    assert fused.applies(model.features, x)
    with torch.no_grad():
        assert fused.applies(model.features, x)
    assert not fused.applies(model.features, x.clone().requires_grad_())  # saliency: the modules


def test_weights_with_another_num_classes_load_all_but_a_fresh_classifier(tmp_path) -> None:
    from alexnet.weights import WeightsMeta, save_weights

    trained = alexnet.create_model("alexnet", num_classes=10, input_size=99)
    path = save_weights(
        trained, tmp_path / "a.safetensors", WeightsMeta(classes=[f"c{i}" for i in range(10)])
    )
    tuned = alexnet.create_model("alexnet", weights=path, num_classes=3)  # timm's fine-tuning start
    assert tuned.num_classes == 3 and tuned.get_classifier().out_features == 3
    assert tuned.weights_meta.classes is None  # the file's class names no longer apply
    for k, v in trained.state_dict().items():
        if not k.startswith(tuned.layer_path("fc8")):
            assert torch.equal(tuned.state_dict()[k], v), k
    features = alexnet.create_model("alexnet", weights=path, num_classes=0).eval()
    x = torch.randn(1, 3, 99, 99)
    with torch.no_grad():
        torch.testing.assert_close(
            features(x), trained.eval().forward_head(trained.forward_features(x), True)
        )
    same = alexnet.create_model("alexnet", weights=path, num_classes=10)
    assert same.weights_meta.classes == [f"c{i}" for i in range(10)]
    assert alexnet.create_model(None, weights=path).config.name == "alexnet"  # the file's own model


def test_a_bare_state_dict_loads_at_its_own_class_count_or_into_a_fresh_classifier(tmp_path) -> None:
    tuned = alexnet.create_model("alexnet", num_classes=10, input_size=99)
    path = tmp_path / "ft.pth"
    torch.save(tuned.state_dict(), path)  # no metadata: the class count is the classifier's rows
    for asked in (None, 10):
        loaded = alexnet.create_model("alexnet", weights=path, num_classes=asked, input_size=99)
        assert loaded.num_classes == 10 and torch.equal(loaded.layer("fc8").weight, tuned.layer("fc8").weight)
    fresh = alexnet.create_model("alexnet", weights=path, num_classes=4, input_size=99)
    assert fresh.num_classes == 4 and torch.equal(fresh.layer("fc7").weight, tuned.layer("fc7").weight)
