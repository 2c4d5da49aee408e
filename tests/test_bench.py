"""``alexnet bench``: the documented fields and their arithmetic, tiny configurations; speed is never asserted."""

from __future__ import annotations

import json
import re

import pytest
import torch

from alexnet.analysis import summarize
from alexnet.bench import (
    REFERENCE,
    TRAIN_FLOPS_FACTOR,
    BenchError,
    MemoryRow,
    Report,
    Row,
    bench_data,
    format_report,
    machine_info,
    run_bench,
)
from alexnet.cli import main
from alexnet.factory import create_model
from alexnet.models import native
from alexnet.models.postops import bf16_supported

ROW_FIELDS = {
    "model",
    "mode",
    "batch_size",
    "input_size",
    "images_per_s",
    "step_ms",
    "gflop_per_image",
    "gflops",
    "matmul_gflops",
    "pct_of_matmul",
    "vs_torchvision",
    "compile_s",
    "step_ms_all",
}
MEMORY_FIELDS = {
    "model",
    "batch_size",
    "baseline_mib",
    "peak_mib",
    "step_peak_mib",
    "rss_after_steps_mib",
    "growth_mib",
    "grows",
}


@pytest.fixture(scope="module", autouse=True)
def small_matmul_reference():
    """These tests check the figures' arithmetic, not the machine's peak: the matmul reference is a 512² product
    here instead of 2048² (its six products before every row were half of a tiny CPU bench's time)."""
    from alexnet import bench

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bench, "MATMUL_SIZE", 512)
        yield


@pytest.fixture(scope="module")
def tiny_json() -> dict:
    """One CLI run: caffenet, both modes, batch 2, one timed step, no warm-up, memory at batch 2."""
    import contextlib
    import io

    out = io.StringIO()
    args = ["bench", "caffenet", "--batch-size", "2", "--repeats", "1", "--warmup", "0"]
    with contextlib.redirect_stdout(out):
        assert main([*args, "--memory-batch-size", "2", "--json"]) == 0
    return json.loads(out.getvalue())


def test_json_has_the_documented_fields(tiny_json):
    assert set(tiny_json) == {"machine", "settings", "rows", "memory", "data"}
    assert {"cpu", "cores", "torch", "torch_threads", "device"} <= set(tiny_json["machine"])
    assert tiny_json["settings"]["train_flops_factor"] == TRAIN_FLOPS_FACTOR
    for row in tiny_json["rows"]:
        assert set(row) == ROW_FIELDS
    for mem in tiny_json["memory"]:
        assert set(mem) == MEMORY_FIELDS


def test_torchvision_reference_row_comes_first_in_every_mode(tiny_json):
    pairs = [(r["model"], r["mode"]) for r in tiny_json["rows"]]
    assert pairs == [(REFERENCE, "train"), ("caffenet", "train"), (REFERENCE, "infer"), ("caffenet", "infer")]
    assert [m["model"] for m in tiny_json["memory"]] == [REFERENCE, "caffenet"]
    for row in tiny_json["rows"]:
        if row["model"] == REFERENCE:
            assert row["vs_torchvision"] == 1.0


def test_flop_figures_follow_the_summary_and_the_3x_training_convention(tiny_json):
    fwd = {
        "caffenet": summarize(create_model("caffenet")).totals["flops"] / 1e9,
        REFERENCE: summarize(create_model("alexnet_owt")).totals["flops"] / 1e9,  # same architecture
    }
    for row in tiny_json["rows"]:
        factor = TRAIN_FLOPS_FACTOR if row["mode"] == "train" else 1
        assert row["gflop_per_image"] == pytest.approx(factor * fwd[row["model"]])
        assert row["images_per_s"] == pytest.approx(row["batch_size"] / (row["step_ms"] / 1e3))
        assert row["gflops"] == pytest.approx(row["gflop_per_image"] * row["images_per_s"])
        assert row["pct_of_matmul"] == pytest.approx(100 * row["gflops"] / row["matmul_gflops"])
        assert row["step_ms"] == pytest.approx(sorted(row["step_ms_all"])[len(row["step_ms_all"]) // 2])
        assert row["input_size"] == (224 if row["model"] == REFERENCE else 227)


def test_memory_rows_are_consistent(tiny_json):
    for mem in tiny_json["memory"]:
        assert mem["peak_mib"] >= mem["baseline_mib"] > 0
        assert mem["step_peak_mib"] == pytest.approx(mem["peak_mib"] - mem["baseline_mib"])
        assert len(mem["rss_after_steps_mib"]) == 4
        # a training step holds at least the gradients of the 61 M parameters (fp32)
        assert mem["step_peak_mib"] > 60e6 * 4 / 2**20


def test_table_names_every_row_and_the_conventions(tiny_json):
    report = Report(
        tiny_json["machine"],
        tiny_json["settings"],
        [Row(**r) for r in tiny_json["rows"]],
        [MemoryRow(**m) for m in tiny_json["memory"]],
    )
    text = format_report(report)
    assert text.count("torchvision_alexnet") == 3 and text.count("caffenet") == 3  # 2 modes + memory
    assert "% mm" in text and "3× forward FLOPs" in text and "growth MiB" in text
    # which LRN implementation the rows measured: the fused kernel wherever a compiler built it
    expected = "fused C++ kernel" if native.kernel() is not None else "PyTorch ops"
    assert tiny_json["machine"]["lrn"] == expected and f"LRN: {expected}" in text
    kernel = native.kernel()
    stages = "fused (channels-last; NCHW input copied to it)" if kernel is not None else "modules"
    if kernel is not None and kernel.avx512:
        stages = "fused, AVX-512 for fp32 and bf16 (channels-last; NCHW input copied to it)"
    assert f"conv stages: {stages}" in text
    post = f"{'conv3-5, fc6-8' if kernel is not None else 'fc6-8'} as oneDNN primitives, ReLU in place"
    assert f"inference post-ops: {post}" in text  # models/postops.py
    assert "fc6-8 in training: oneDNN products (fp32)" in text  # models/linear_train.py
    grads = native.weight_grad_kernel() is not None  # a library built for AVX-512 or AVX2 + FMA
    conv1 = "weight gradient by C++ kernel (fp32)" if grads else "oneDNN"
    if grads:  # models/first_stage.py
        conv1 += ", from the pooled maps' gradient when pool1 precedes norm1"
    assert f"conv1: {conv1};" in text  # models/first_conv.py
    if grads:  # models/conv_stage.py
        assert "conv2: weight gradient from the pooled maps' when pool2 precedes norm2 (fp32);" in text


def test_input_pipeline_rows_for_ours_and_torchvisions_stock(tmp_path):
    from alexnet.data.synthetic import ensure_builtin_dataset

    root = ensure_builtin_dataset(
        tmp_path, classes=2, train_per_class=4, val_per_class=1, size=64, progress=False
    )
    threads = torch.get_num_threads()
    torch.set_num_threads(2)  # not the one thread the measurement takes, so that restoring it shows
    try:
        rows = bench_data(root, images=6, batch_size=3)
        assert torch.get_num_threads() == 2  # restored after the single-thread measurement
    finally:
        torch.set_num_threads(threads)
    assert [r.pipeline for r in rows] == ["alexnet", "torchvision_stock"]
    for r in rows:
        assert r.images == 3 and r.workers == 0 and r.images_per_s > 0  # timed after the first batch
        assert r.images_per_s_per_core == r.images_per_s
    with pytest.raises(BenchError, match="timed after its first batch"):
        bench_data(root, images=3, batch_size=3)  # one batch: nothing left to time
    from alexnet.data.packed import pack

    pack(root, "train", progress=False)  # `alexnet data-pack`: a row reading its pixels too
    rows = bench_data(root, images=6, batch_size=3)
    assert [r.pipeline for r in rows] == ["alexnet", "alexnet_packed", "torchvision_stock"]
    assert rows[1].images == 3 and rows[1].images_per_s > 0


def test_a_pipeline_that_unreadable_images_stop_is_a_row_saying_so(tmp_path):
    """Ours skips a bad file, torchvision's stock pipeline stops at it: either way that pipeline's row says why
    it was not timed, and the rows that could be timed (and the model table before them) are kept — not a
    traceback, nor a timing of nothing blamed on --data-images."""
    from alexnet.data.synthetic import ensure_builtin_dataset

    root = ensure_builtin_dataset(
        tmp_path, classes=2, train_per_class=2, val_per_class=1, size=64, progress=False
    )
    for path in (root / "train").rglob("*.*"):
        path.write_bytes(b"\xff\xd8\xff not a jpeg")
    rows = bench_data(root, images=4, batch_size=2)
    assert [r.pipeline for r in rows] == ["alexnet", "torchvision_stock"]
    assert re.search(r"no readable image among the files read from .*: not an image", rows[0].stopped)
    assert "cannot skip one" in rows[1].stopped and rows[1].images_per_s == 0
    one = root / "train" / "00_circle"
    good = ensure_builtin_dataset(
        tmp_path / "good", classes=2, train_per_class=4, val_per_class=1, size=64, progress=False
    )
    for i, path in enumerate(sorted((good / "train").rglob("*.*"))):
        path.replace(one / f"good{i}{path.suffix}")
    ours, stock = bench_data(root, images=12, batch_size=2)
    assert ours.stopped is None and ours.images > 0 and ours.images_per_s > 0
    assert stock.stopped.startswith("at an unreadable image") and stock.images == 0
    report = Report(machine_info(torch.device("cpu")), {}, data=[ours, stock])
    text = format_report(report)
    assert "torchvision_stock       not timed: stopped at an unreadable image" in text
    assert report.to_dict()["data"][1]["stopped"] == stock.stopped


def test_too_few_data_images_for_one_timed_batch_are_refused_before_the_model_table(tmp_path, capsys):
    assert main(["bench", "--data", str(tmp_path), "--data-images", "64", "--batch-size", "64"]) == 2
    err = capsys.readouterr().err
    assert "--data-images 64: the input pipeline is timed after its first batch of 64" in err
    assert "…" not in err  # no model row was started


def test_input_pipeline_cycles_through_a_small_folder_for_a_long_run(tmp_path):
    """--data-images beyond the folder's files reads them again (steady state, page cache warm): every row
    times as many images, each file read about equally often."""
    from alexnet.data.synthetic import ensure_builtin_dataset

    root = ensure_builtin_dataset(
        tmp_path, classes=2, train_per_class=4, val_per_class=1, size=64, progress=False
    )
    rows = bench_data(root, images=21, batch_size=3)
    assert [r.images for r in rows] == [18, 18]  # 21 read, the first batch untimed
    from collections import Counter
    from types import SimpleNamespace

    from alexnet.bench import _cycle

    folder = SimpleNamespace(samples=[(f"f{i}.jpg", i % 2) for i in range(8)])
    _cycle(folder, 21)
    reads = Counter(path for path, _ in folder.samples)
    assert len(folder.samples) == 21 and len(reads) == 8 and max(reads.values()) - min(reads.values()) <= 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["bench", "resnet50"], "unknown model 'resnet50'"),
        (["bench", "--batch-size", "0"], "--batch-size must be ≥ 1"),
        (
            ["bench", "--device", "cuda:0", "--no-memory"] if not torch.cuda.is_available() else None,
            "no CUDA",
        ),
        (["bench", "--device", "tpu", "--no-memory"], "unknown device"),
        (["bench", "--only-data"], "--only-data needs --data"),
        (["bench", "--workers", "-1"], "--workers must be ≥ 0, not -1"),
        (["bench", "--cuda-graph", "--no-memory"], "--cuda-graph needs a CUDA device (got cpu)"),
        # checked before any model row is timed (no --no-memory: it would take minutes otherwise)
        (["bench", "alexnet", "--data", "/nonexistent/imagenet"], "no data folder /nonexistent/imagenet"),
    ],
)
def test_bad_options_are_one_line_errors(capsys, args, message):
    if args is None:
        pytest.skip("a CUDA device is present")
    try:
        code = main(args)
    except SystemExit as e:  # argparse rejects a value its type refuses (an unknown model): one line, code 2
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err


def test_amp_on_a_cpu_without_bf16_kernels_is_a_one_line_error(capsys, monkeypatch):
    from alexnet.models import postops

    monkeypatch.setattr(postops, "bf16_supported", lambda: False)
    assert main(["bench", "caffenet", "--amp", "--no-memory"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no bfloat16 kernels in oneDNN" in err and "without --amp" in err


def test_cuda_graphs_and_torch_compile_are_not_combined():
    with pytest.raises(BenchError, match="choose one"):
        run_bench(["caffenet"], device="cuda" if torch.cuda.is_available() else "cpu", cuda_graph=True,
                  compile=True, memory=False)  # fmt: skip


def test_library_rejects_bad_counts():
    with pytest.raises(BenchError):
        run_bench(["caffenet"], repeats=0, memory=False)


def test_memory_is_flagged_as_growing_only_when_it_rises_at_every_step():
    from alexnet.bench import memory_grows

    assert memory_grows([2000, 2100, 2400, 2700], step_peak=1500)  # +300 MiB per step: a leak
    assert not memory_grows(
        [2000, 2000, 2093, 2093], step_peak=1000
    )  # one jump: the allocator keeping blocks
    assert not memory_grows([2000, 2001, 2002, 2003], step_peak=1000)  # noise


@pytest.mark.skipif(
    not bf16_supported(), reason="oneDNN has no bfloat16 kernels on this CPU: --amp is refused"
)
def test_amp_rows_run_under_bf16_autocast_against_the_bf16_matmul_rate(monkeypatch):
    import contextlib
    import io

    seen: list[torch.dtype] = []
    real_mm = torch.mm

    def spy_mm(a, b, *args, **kwargs):
        seen.append(a.dtype)
        return real_mm(a, b, *args, **kwargs)

    monkeypatch.setattr(torch, "mm", spy_mm)
    out = io.StringIO()
    args = ["bench", "caffenet", "--mode", "infer", "--amp", "--batch-size", "2", "--repeats", "1"]
    with contextlib.redirect_stdout(out):
        assert main([*args, "--warmup", "0", "--no-memory", "--json"]) == 0
    report = json.loads(out.getvalue())
    assert report["settings"]["amp"] is True
    assert seen and set(seen) == {torch.bfloat16}  # the matmul reference ran in bf16
    text = format_report(Report(report["machine"], report["settings"], [Row(**r) for r in report["rows"]]))
    assert "bf16 matmul" in text and "fp32 matmul" not in text
    # the timed step itself runs the model in bf16
    from alexnet.bench import _step_fn

    model, x, y = create_model("caffenet"), torch.randn(1, 3, 227, 227), torch.zeros(1, dtype=torch.long)
    assert _step_fn(model, "infer", x, y, amp=True)().dtype == torch.bfloat16
    assert _step_fn(model, "infer", x, y, amp=False)().dtype == torch.float32


def test_interleaved_rows_time_every_model_once_per_round_against_one_matmul_rate(monkeypatch):
    from alexnet import bench

    order: list[str] = []
    real = bench._prepared

    def spy(name, *args):
        step, x, gflop, compile_s = real(name, *args)

        def counted():
            order.append(name)
            return step()

        return counted, x, gflop, compile_s

    monkeypatch.setattr(bench, "_prepared", spy)
    report = bench.run_bench(
        ["caffenet"], modes=("infer",), batch_size=2, repeats=3, warmup=1, memory=False, interleave=True
    )
    # one warm-up each, then three rounds of one step per model, the reference first
    assert order == [bench.REFERENCE, "caffenet"] * 4
    assert report.settings["interleave"] is True
    assert [r.model for r in report.rows] == [bench.REFERENCE, "caffenet"]
    assert all(len(r.step_ms_all) == 3 for r in report.rows)
    assert len({r.matmul_gflops for r in report.rows}) == 1
    assert report.rows[1].vs_torchvision is not None
    assert "per round (interleaved)" in bench.format_report(report)


def test_cudnn_algorithm_choice_is_an_ab_switch_named_in_the_header(monkeypatch, tiny_json):
    """CUDA rows time cuDNN's algorithms per shape unless ALEXNET_CUDNN_BENCHMARK=0, and the header says which."""
    from alexnet import bench

    assert bench.cudnn_benchmark()
    monkeypatch.setenv("ALEXNET_CUDNN_BENCHMARK", "0")
    assert not bench.cudnn_benchmark()
    machine = dict(tiny_json["machine"], cudnn="algorithms by heuristics")
    text = format_report(Report(machine, tiny_json["settings"], [Row(**r) for r in tiny_json["rows"]]))
    assert "cuDNN: algorithms by heuristics" in text
