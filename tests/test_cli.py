"""The command line: --help everywhere, real output, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import alexnet
from alexnet.cli import build_parser, main
from alexnet.weights import WeightsMeta, save_weights

ALEXNET = [sys.executable, "-m", "alexnet.cli"]


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*ALEXNET, *args], capture_output=True, text=True, timeout=300)


def test_console_script_help_lists_commands():
    r = run_cli("--help")
    assert r.returncode == 0
    for cmd in ("models", "summary", "predict"):
        assert cmd in r.stdout


def test_python_dash_m_alexnet_is_the_alexnet_command():
    r = subprocess.run(
        [sys.executable, "-m", "alexnet", "--version"], capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0 and r.stdout.strip() == f"alexnet {alexnet.__version__}", r.stderr


def test_help_argument_errors_and_the_model_list_answer_without_importing_torch():
    """`alexnet --help`, a command's --help, its argument errors (a misspelt model name among them) and
    `alexnet models` need no torch (3 s to import): the registry is plain data and the commands import the
    library when they run."""
    code = (
        "import sys, contextlib, io\n"
        "import alexnet\n"
        "from alexnet.cli import main\n"
        "assert 'zfnet' in alexnet.list_models()\n"
        "err = io.StringIO()\n"
        "for argv in (['--help'], ['train', '--help'], ['predict', '--help'], ['train', '--frobnicate'],\n"
        "             ['summary', 'zfnt'], ['bench', 'alexnet', 'vgg16'], ['train', '-m', 'nosuch'], ['models']):\n"
        "    with contextlib.suppress(SystemExit), contextlib.redirect_stdout(io.StringIO()), "
        "contextlib.redirect_stderr(err):\n"
        "        main(argv)\n"
        "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))\n"
        "print(err.getvalue())\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    loaded, *errors = r.stdout.strip().splitlines()
    assert loaded == "[]"
    assert [e for e in errors if "unknown model" in e] == [
        "alexnet summary: error: argument MODEL: unknown model 'zfnt'; did you mean 'zfnet'? choose one of: "
        + ", ".join(alexnet.list_models())
        + " (see alexnet summary --help)",
        "alexnet bench: error: argument MODEL: unknown model 'vgg16'; choose one of: "
        + ", ".join(alexnet.list_models())
        + " (see alexnet bench --help)",
        "alexnet train: error: argument --model/-m: unknown model 'nosuch'; choose one of: "
        + ", ".join(alexnet.list_models())
        + " (see alexnet train --help)",
    ]


def test_every_command_has_help(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    assert len(commands) >= 3
    for name in commands:
        with pytest.raises(SystemExit) as e:
            main([name, "--help"])
        assert e.value.code == 0, name
        assert "usage:" in capsys.readouterr().out


def test_models_lists_every_registered_model(capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    for name in alexnet.list_models():
        assert name in out


def test_summary_compare_prints_side_by_side(capsys):
    assert main(["summary", "--compare", "alexnet", "zfnet"]) == 0
    out = capsys.readouterr().out
    assert "alexnet (227)" in out and "zfnet (224)" in out
    assert "60,965,224" in out and "62,357,608" in out
    assert "110×110" in out


def test_summary_json_schema(capsys):
    assert main(["summary", "alexnet", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["model"] == "alexnet" and data["input_size"] == 227
    assert set(data["layers"][0]) == {
        "name",
        "type",
        "output_shape",
        "params",
        "macs",
        "flops",
        "activation_bytes",
        "receptive_field",
        "stride",
    }
    assert set(data["totals"]) == {"params", "macs", "flops", "activation_bytes"}
    assert data["totals"]["params"] == 60_965_224


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def test_unknown_model_is_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as stopped:  # refused as the command line is read
        main(["summary", "vgg16"])
    assert stopped.value.code == 2
    assert "unknown model 'vgg16'" in one_line_error(capsys)


def test_bad_flag_is_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        main(["summary", "alexnet", "--frobnicate"])
    assert e.value.code == 2
    assert "unrecognized arguments" in one_line_error(capsys)


@pytest.mark.parametrize(
    "command",
    [
        ["train", "--out", "unused"],
        ["visualize", "maximize", "--model", "alexnet", "--out", "unused"],
        ["visualize", "smoothgrad", "--model", "alexnet", "--out", "unused", "cat.jpg"],
        ["visualize", "sanity", "--model", "alexnet", "--out", "unused", "cat.jpg"],
    ],
)
@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("-1", "a seed is a whole number from 0 to 4294967295, not -1"),
        (
            "99999999999999999999999",
            "a seed is a whole number from 0 to 4294967295, not 99999999999999999999999",
        ),
        ("1.5", "expected a whole number, got '1.5'"),
    ],
)
def test_a_seed_torchs_generators_cannot_take_is_refused_as_the_command_line_is_read(
    capsys, tmp_path, monkeypatch, command, value, message
):
    """A seed past 2⁶⁴ used to overflow a generator inside the run, as a traceback."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stopped:
        main([*command, "--seed", value])
    assert stopped.value.code == 2
    assert f"argument --seed: {message}" in one_line_error(capsys)
    assert not (tmp_path / "unused").exists()


def test_too_small_input_size_is_a_clear_error(capsys):
    assert main(["summary", "alexnet", "--input-size", "40"]) == 2
    assert "cannot take a 40px input" in one_line_error(capsys)


@pytest.mark.parametrize(
    "command",
    [
        ["visualize", "filters", "--model", "alexnet", "--out", "{file}"],
        ["visualize", "filters", "--model", "alexnet", "--out", "{file}/sub"],
        ["export", "--model", "alexnet", "--out", "{file}/m.onnx"],
        ["export", "--model", "alexnet", "--out", "{dir}", "--force"],
        ["data-stats", "{dir}", "--out", "{file}/stats"],
        ["train", "--recipe", "demo", "--out", "{file}/run"],
    ],
)
def test_an_unwritable_out_fails_before_any_work_with_one_line(capsys, tmp_path, command):
    (tmp_path / "afile").write_text("x")
    args = [a.format(file=tmp_path / "afile", dir=tmp_path) for a in command]
    assert main(args) == 2
    assert "--out" in one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile"]


@pytest.mark.parametrize(
    "command",
    [
        ["export", "--model", "vgg", "--out", "{new}/sub/m.onnx"],
        ["export", "--weights", "{tmp}/nope.safetensors", "--out", "{new}/m.onnx"],
        [
            "visualize",
            "activations",
            "--model",
            "alexnet",
            "--layer",
            "nope",
            "{tmp}/none.jpg",
            "--out",
            "{new}",
        ],
        ["data-stats", "{tmp}/nowhere", "--out", "{new}/stats"],
    ],
)
def test_a_failed_command_leaves_no_output_folder_behind(capsys, tmp_path, command):
    """The output folder is made up front (to fail early if it cannot be); a command that then fails removes it
    again, and any parent it made, while they are empty, and keeps folders that were there before."""
    (tmp_path / "kept").mkdir()
    args = [a.format(new=tmp_path / "kept" / "new", tmp=tmp_path) for a in command]
    assert main(args) == 2
    one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept"]
    assert not any((tmp_path / "kept").iterdir())


def test_data_stats_out_names_a_file_not_a_folder(capsys, tmp_path):
    assert main(["data-stats", str(tmp_path), "--out", str(tmp_path)]) == 2
    assert "is a folder; give a file name" in one_line_error(capsys)


@pytest.fixture
def owt_weights(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "owt.safetensors"
    save_weights(alexnet.create_model("alexnet_owt"), path)
    return path


def test_predict_prints_topk_with_imagenet_names(capsys, owt_weights, chelsea_jpeg):
    assert main(["predict", str(chelsea_jpeg), "--weights", str(owt_weights), "--topk", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == str(chelsea_jpeg) and len(lines) == 4
    from alexnet.data.classes import imagenet_classes

    assert any(name in lines[1] for name in imagenet_classes())


def test_predict_uses_class_names_from_the_weights(capsys, tmp_path, chelsea_jpeg):
    path = tmp_path / "ten.safetensors"
    names = [f"shape{i}" for i in range(10)]
    save_weights(alexnet.create_model("alexnet", num_classes=10), path, WeightsMeta(classes=names))
    assert main(["predict", str(chelsea_jpeg), "--weights", str(path), "--topk", "10"]) == 0
    out = capsys.readouterr().out
    assert all(n in out for n in names)


def test_predict_missing_image(capsys, owt_weights, tmp_path):
    assert main(["predict", str(tmp_path / "nope.jpg"), "--weights", str(owt_weights)]) == 2
    assert "nope.jpg" in one_line_error(capsys)


def test_predict_non_image_file(capsys, owt_weights, tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not a jpeg")
    assert main(["predict", str(bad), "--weights", str(owt_weights)]) == 2
    assert "not an image" in one_line_error(capsys)


def test_predict_missing_weights_file(capsys, chelsea_jpeg, tmp_path):
    assert main(["predict", str(chelsea_jpeg), "--weights", str(tmp_path / "w.safetensors")]) == 2
    assert "no such weights file" in one_line_error(capsys)


def test_a_run_folder_given_as_weights_names_its_weights_file(capsys, chelsea_jpeg, owt_weights, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "model.safetensors").write_bytes(owt_weights.read_bytes())
    assert main(["predict", str(chelsea_jpeg), "--weights", str(run)]) == 2
    assert one_line_error(capsys).endswith(
        f"{run}: a run folder, not a weights file; its weights are {run}/model.safetensors"
    )


def test_predict_takes_a_run_folder_and_runs_with_weights_as_an_ensemble(capsys, chelsea_jpeg, tmp_path):
    names = [f"shape{i}" for i in range(4)]
    runs = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        run = tmp_path / f"run{seed}"
        run.mkdir()
        save_weights(
            alexnet.create_model("alexnet", num_classes=4),
            run / "model.safetensors",
            WeightsMeta(classes=names),
        )
        runs.append(run)
    top = ["predict", str(chelsea_jpeg), "--topk", "4"]
    assert main([*top, "--run", str(runs[0])]) == 0
    assert main([*top, "--weights", str(runs[0] / "model.safetensors")]) == 0
    by_run, by_file = capsys.readouterr().out.split(str(chelsea_jpeg))[1:]
    assert by_run == by_file
    assert main([*top, "--run", str(runs[0]), "--weights", str(runs[1] / "model.safetensors")]) == 0
    assert main([*top, "--run", str(runs[0]), "--run", str(runs[1])]) == 0
    mixed, both_runs = capsys.readouterr().out.split(str(chelsea_jpeg))[1:]
    assert mixed == both_runs and mixed != by_run  # the two networks' averaged softmax
    assert main(["predict", str(chelsea_jpeg)]) == 2
    assert one_line_error(capsys).endswith("--weights FILE or --run DIR is required (a trained model)")


def test_weights_for_another_model_are_refused(capsys, owt_weights, chelsea_jpeg):
    assert main(["predict", str(chelsea_jpeg), "--model", "alexnet", "--weights", str(owt_weights)]) == 2
    assert "holds weights for model 'alexnet_owt', not 'alexnet'" in one_line_error(capsys)


def test_mismatched_tensor_names_both_shapes(capsys, tmp_path, chelsea_jpeg):
    from safetensors.torch import save_file

    state = alexnet.create_model("alexnet_owt").state_dict()
    state["classifier.1.weight"] = torch.zeros(4096, 6400)
    path = tmp_path / "bad.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, path, metadata={"model": "alexnet_owt"})
    assert main(["predict", str(chelsea_jpeg), "--weights", str(path)]) == 2
    assert "classifier.1.weight expects [4096, 9216], file has [4096, 6400]" in one_line_error(capsys)


def test_corrupt_weights_file(capsys, tmp_path, chelsea_jpeg):
    path = tmp_path / "junk.safetensors"
    path.write_bytes(b"\x00" * 100)
    assert main(["predict", str(chelsea_jpeg), "--model", "alexnet", "--weights", str(path)]) == 2
    assert "not a readable safetensors file" in one_line_error(capsys)


def test_subprocess_error_has_no_traceback():
    r = run_cli("summary", "nosuchnet")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0 and "Traceback" not in r.stderr


def test_predict_empty_image_file_is_one_line_exit_2(capsys, owt_weights, tmp_path):
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    assert main(["predict", str(empty), "--weights", str(owt_weights)]) == 2
    assert "empty file, not an image" in one_line_error(capsys)


def test_weights_accepts_a_published_source_name_and_checks_its_digest(
    capsys, chelsea_jpeg, tmp_path, monkeypatch
):
    # A cached file under the source's name is used without the network, and its published SHA-256 is checked.
    monkeypatch.setenv("ALEXNET_CACHE", str(tmp_path))
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "bvlcalexnet-8.onnx").write_bytes(b"not the published file")
    assert main(["predict", str(chelsea_jpeg), "--weights", "bvlcalexnet-8"]) == 2
    err = one_line_error(capsys)
    assert "bvlcalexnet-8" in err and "no such weights file" not in err


def test_weights_import_of_a_source_for_another_model_is_refused_before_any_download(
    capsys, tmp_path, monkeypatch
):
    import alexnet.weights.sources as sources

    def no_download(*args: object, **kwargs: object) -> None:
        raise AssertionError("fetched")

    monkeypatch.setattr(sources, "fetch", no_download)
    out = tmp_path / "z.safetensors"
    assert main(["weights", "import", "bvlcalexnet-8", "--model", "zfnet", "--out", str(out)]) == 2
    err = one_line_error(capsys)
    assert "bvlc_alexnet's weights, not zfnet's" in err and "--model bvlc_alexnet" in err and not out.exists()


@pytest.mark.parametrize("command", ["predict", "eval"])
@pytest.mark.parametrize(
    ("device", "words"),
    [("bogus", "unknown device 'bogus'"), ("cuda", "CUDA is not available")],
)
def test_a_bad_or_absent_device_is_one_line_exit_2(capsys, owt_weights, chelsea_jpeg, command, device, words):
    if device == "cuda" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    args = [str(chelsea_jpeg)] if command == "predict" else []
    assert main([command, *args, "--weights", str(owt_weights), "--device", device]) == 2
    assert words in one_line_error(capsys)


@pytest.mark.parametrize("config", ["[]", '"data"', "3", "null", '{"data": 5}', "{not json"])
def test_eval_of_a_run_whose_config_is_not_an_object_of_settings_is_one_line(capsys, tmp_path, config):
    (tmp_path / "model.safetensors").write_bytes(b"")  # never read: the config is checked first
    (tmp_path / "config.json").write_text(config)
    assert main(["eval", "--run", str(tmp_path)]) == 2
    assert f"{tmp_path / 'config.json'}" in one_line_error(capsys)


def test_predict_classifies_every_readable_image_and_reports_each_bad_one(
    capsys, owt_weights, chelsea_jpeg, tmp_path
):
    bad, missing = tmp_path / "bad.jpg", tmp_path / "missing.jpg"
    bad.write_text("not a jpeg")
    images = [chelsea_jpeg, bad, missing, chelsea_jpeg]
    assert main(["predict", *map(str, images), "--weights", str(owt_weights), "--topk", "1"]) == 2
    out, err = capsys.readouterr()
    assert out.splitlines()[::2] == [str(chelsea_jpeg)] * 2  # both good images, each with its top-1
    lines = err.strip().splitlines()
    assert len(lines) == 2 and "Traceback" not in err
    assert "bad.jpg: not an image" in lines[0] and "missing.jpg: cannot read" in lines[1]


def test_predict_with_topk_zero_is_refused_not_an_empty_list():
    from alexnet.predict import predict

    model = alexnet.create_model("alexnet", num_classes=10)
    with pytest.raises(ValueError, match="topk must be at least 1"):
        predict(model, torch.zeros(1, 3, 227, 227), topk=0)


def test_predict_leaves_the_model_in_the_mode_it_found_it():
    from alexnet.predict import predict

    model = alexnet.create_model("alexnet", num_classes=10, input_size=99).train()
    (top,) = predict(model, torch.rand(1, 3, 99, 99), topk=2)
    assert len(top) == 2 and model.training


def test_weights_info_shows_stored_numbers_without_float_noise(capsys, tmp_path):
    path = tmp_path / "w.safetensors"
    model = alexnet.create_model("alexnet_owt")
    save_weights(model, path, WeightsMeta(model="alexnet_owt", extra={"val_top5_err": 1 - 0.998}))
    assert main(["weights", "info", str(path)]) == 0
    assert "val_top5_err:   0.002\n" in capsys.readouterr().out


@pytest.mark.parametrize("content", [None, b"", b"not safetensors at all"])
def test_weights_info_on_a_missing_or_corrupt_file_is_one_line(capsys, tmp_path, content):
    path = tmp_path / "w.safetensors"
    if content is not None:
        path.write_bytes(content)
    assert main(["weights", "info", str(path)]) == 2
    assert str(path) in one_line_error(capsys)


@pytest.mark.parametrize(
    ("argv", "command"),
    [
        (["summary", "alexnet", "--frobnicate"], "alexnet summary"),
        (["train", "--frobnicate", "1"], "alexnet train"),
        (["visualize", "filters", "--out", "x", "--frobnicate"], "alexnet visualize filters"),
        (["weights", "sources", "--frobnicate"], "alexnet weights sources"),
    ],
)
def test_an_unknown_flag_points_to_the_help_of_the_command_it_was_given_to(capsys, argv, command):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = one_line_error(capsys)
    assert err.startswith(f"{command}: error: unrecognized arguments: ")
    assert err.endswith(f"(see {command} --help)")


def test_eval_accepts_a_published_source_name_as_predict_does(capsys, tmp_path, monkeypatch):
    # As for predict: the name is looked up in the cache (then fetched), not refused as a missing file.
    monkeypatch.setenv("ALEXNET_CACHE", str(tmp_path))
    (tmp_path / "weights").mkdir()
    (tmp_path / "weights" / "bvlcalexnet-8.onnx").write_bytes(b"not the published file")
    assert main(["eval", "--weights", "bvlcalexnet-8", "--data", str(tmp_path)]) == 2
    err = one_line_error(capsys)
    assert "bvlcalexnet-8" in err and "no such weights file" not in err
    assert main(["eval", "--weights", "bvlcalexnet-99", "--data", str(tmp_path)]) == 2
    assert "bvlcalexnet-99: no such weights file" in one_line_error(capsys)


def test_eval_and_predict_run_on_the_device_train_picks_by_default():
    parser = build_parser()
    assert parser.parse_args(["eval", "--weights", "w"]).device == "auto"
    assert parser.parse_args(["predict", "x.jpg", "--weights", "w"]).device == "auto"
    from alexnet.train.config import TrainConfig

    assert TrainConfig().device == "auto"


@pytest.mark.parametrize(
    "command",
    [["eval"], ["predict"], ["export"], ["serve"], ["visualize", "filters"], ["visualize", "occlusion"]],
)
def test_weights_help_lists_every_form_the_loader_accepts(capsys, command):
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for form in (".safetensors", ".pth", ".onnx", ".caffemodel", "alexnet weights sources", "'torchvision'"):
        assert form in text, (command, form)


@pytest.mark.parametrize(
    ("command", "needle"),
    [(["bench"], "both (default)"), (["report"], "streamed for the top-9 (default 60)")],
)
def test_help_states_the_default(capsys, command, needle):
    with pytest.raises(SystemExit):
        main([*command, "--help"])
    assert needle in " ".join(capsys.readouterr().out.split())


@pytest.mark.slow
def test_the_first_build_of_the_cpu_kernels_is_announced_on_stderr(tmp_path, run_alexnet):
    """A command that builds the C++ kernels (once per machine, 8-15 s) says so instead of pausing silently."""
    args = ["bench", "alexnet", "--mode", "infer", "--batch-size", "1", "--repeats", "1", "--warmup", "0"]
    args += ["--no-memory", "--json"]
    cache = str(tmp_path / "cache")
    proc = run_alexnet(*args, ALEXNET_CACHE=cache, ALEXNET_NATIVE_CFLAGS="-O0")  # the build, not its speed
    assert proc.returncode == 0, proc.stderr[-2000:]
    notices = [
        line for line in proc.stderr.splitlines() if line.startswith("alexnet: building the CPU kernels")
    ]
    assert len(notices) == 1, proc.stderr
    json.loads(proc.stdout)  # stdout stays the JSON alone
    assert json.loads(proc.stdout)["machine"]["lrn"] == "fused C++ kernel (built with -O0)"
    # another command on the same machine finds the library built (summary's forward pass runs the kernels)
    again = run_alexnet("summary", "alexnet", ALEXNET_CACHE=cache, ALEXNET_NATIVE_CFLAGS="-O0")
    assert again.returncode == 0 and "building the CPU kernels" not in again.stderr  # built once
