"""``alexnet doctor``: broken set-ups are diagnosed as such (naming the layer), healthy ones are not; CLI contract."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from alexnet.cli import main
from alexnet.diagnostics.doctor import (
    Report,
    Run,
    RunDirError,
    diagnose,
    diagnose_run,
    format_report,
    read_health,
)
from alexnet.diagnostics.health import HEALTH_CSV
from alexnet.diagnostics.probe import ProbeConfig, probe
from alexnet.diagnostics.rules import HealthRecord, LayerHealth, Thresholds, check_vanishing
from alexnet.errors import DataError

QUICK = dict(batch_size=16, num_classes=4, per_class=16, fc_width=64, every=5)
TH = Thresholds(stuck_after=20)  # the default 100 steps, scaled to these short runs


@pytest.fixture(scope="module")
def tiny_init(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """Weights N(0, 1e-4), the paper's biases of 1, SGD lr 0.01: the signal dies before it reaches fc8."""
    d = tmp_path_factory.mktemp("tiny-init")
    warnings: list[str] = []
    probe(ProbeConfig(steps=30, init_std=1e-4, **QUICK), d, thresholds=TH, on_warning=warnings.append)
    return d, warnings


@pytest.fixture(scope="module")
def tiny_init_run(tiny_init: tuple[Path, list[str]]) -> Path:
    return tiny_init[0]


@pytest.fixture(scope="module")
def high_lr_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The paper's init with a learning rate of 10: diverges within a few dozen steps."""
    d = tmp_path_factory.mktemp("high-lr")
    probe(ProbeConfig(steps=20, lr=10.0, **QUICK), d, thresholds=TH)
    return d


@pytest.fixture(scope="module")
def healthy(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """He init + AdamW at lr 1e-4 (the issue's working set-up) on four classes of gratings."""
    d = tmp_path_factory.mktemp("healthy")
    warnings: list[str] = []
    cfg = ProbeConfig(steps=40, init="he", optimizer="adamw", lr=1e-4, weight_decay=0.0, **QUICK)
    probe(cfg, d, thresholds=TH, on_warning=warnings.append)
    return d, warnings


@pytest.fixture(scope="module")
def healthy_run(healthy: tuple[Path, list[str]]) -> Path:
    return healthy[0]


def test_healthy_short_run_raises_no_live_warning_and_learns(healthy: tuple[Path, list[str]]) -> None:
    run_dir, warnings = healthy
    assert warnings == []
    records = diagnose_run(run_dir).run.records
    assert records[-1].loss < 0.9 * math.log(4)  # well below chance: it learns
    assert all(lh.update_ratio is not None and 1e-6 < lh.update_ratio < 0.1 for lh in records[-1].layers)


def test_tiny_init_warns_live_of_vanishing_gradients_in_early_layers_and_stuck_loss(
    tiny_init: tuple[Path, list[str]],
) -> None:
    _, warnings = tiny_init
    assert any("conv1's gradient vanishes" in w for w in warnings)
    assert any("within 1% of ln(4)" in w for w in warnings)
    assert not any("fc8's gradient vanishes" in w for w in warnings)


def test_tiny_init_is_diagnosed_as_stuck_loss_with_vanishing_gradients_in_the_early_layers(
    tiny_init_run: Path,
) -> None:
    report = diagnose_run(tiny_init_run)
    stuck = next(d for d in report.diagnoses if d.code == "stuck_at_chance")
    assert stuck.severity == "problem"
    assert "conv1" in stuck.layers and "conv2" in stuck.layers
    assert "fc8" not in stuck.layers  # the gradient is strong at the top
    evidence = " ".join(stuck.evidence)
    assert "ln(4)" in evidence and "N(0, 0.0001)" in evidence
    assert "He et al. 2015" in stuck.remedy
    assert not report.healthy


def test_biases_of_one_that_swamp_tiny_weights_point_to_caffes_bias_note(tiny_init_run: Path) -> None:
    stuck = next(d for d in diagnose_run(tiny_init_run).diagnoses if d.code == "stuck_at_chance")
    assert "biases initialised to 1" in " ".join(stuck.evidence)
    assert "0.1" in stuck.remedy and "bvlc_alexnet" in stuck.remedy


def test_learning_rate_ten_is_diagnosed_as_divergence_with_the_learning_rate_as_evidence(
    high_lr_run: Path,
) -> None:
    report = diagnose_run(high_lr_run)
    problems = {d.code: d for d in report.diagnoses if d.severity == "problem"}
    assert {"nonfinite", "exploding_gradients"} & set(problems)
    d = problems.get("nonfinite") or problems["exploding_gradients"]
    assert "learning rate 10" in " ".join(d.evidence)
    assert "warm-up" in d.remedy and "Goyal" in d.remedy


def test_healthy_run_is_reported_healthy(healthy_run: Path) -> None:
    report = diagnose_run(healthy_run)
    assert report.healthy
    assert report.diagnoses[0].code == "healthy"
    assert all(d.severity != "problem" for d in report.diagnoses)


def test_lrn_denominator_range_is_reported_against_k(healthy_run: Path) -> None:
    report = diagnose_run(healthy_run)
    lrn = next(d for d in report.diagnoses if d.code.startswith("lrn_"))
    assert lrn.layers == ["conv1", "conv2"]
    last = report.run.records[-1]
    # inputs normalised to unit variance: α·Σa² is tiny next to the paper's k = 2 (AlexNet §3.3), under 5 % of it
    conv1 = last.layer("conv1")
    assert 2.0 <= conv1.lrn_denom_min <= conv1.lrn_denom_max < 2.0 * 1.05
    assert "(k = 2)" in lrn.evidence[0]


def test_health_log_round_trips_through_the_reader(healthy_run: Path) -> None:
    records = read_health(healthy_run / HEALTH_CSV)
    assert [r.step for r in records] == [1, 6, 11, 16, 21, 26, 31, 36]
    assert records[0].layers[0].layer == "conv1"
    assert all(math.isfinite(lh.grad_norm) for r in records for lh in r.layers)


def test_doctor_cli_prints_evidence_and_remedy_and_writes_the_png(
    tiny_init_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    png = tmp_path / "curves.png"
    assert main(["doctor", str(tiny_init_run), "--out", str(png)]) == 0
    out = capsys.readouterr().out
    assert "PROBLEM Loss stuck at chance" in out
    assert "evidence:" in out and "remedy:" in out
    assert "per-layer health at step 26" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_doctor_cli_json_is_valid_json_even_for_a_diverged_run(
    high_lr_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["doctor", str(high_lr_run), "--json", "--no-plot"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["healthy"] is False
    assert data["summary"]["lr"] == 10.0
    assert data["diagnoses"][0]["severity"] == "problem"
    assert {lh["layer"] for lh in data["last_step"]["layers"]} >= {"conv1", "fc8"}


def test_format_report_shows_a_per_layer_table(healthy_run: Path) -> None:
    text = format_report(diagnose_run(healthy_run))
    table = text.split("per-layer health at step")[1].splitlines()[1:]
    assert table[0].split()[0] == "layer"
    assert [row.split()[0] for row in table[1:]] == [
        "conv1",
        "conv2",
        "conv3",
        "conv4",
        "conv5",
        "fc6",
        "fc7",
        "fc8",
    ]


def test_bad_run_folders_are_one_line_errors_with_exit_code_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["doctor", str(tmp_path / "missing")]) == 2
    assert main(["doctor", str(tmp_path)]) == 2  # a folder without health.csv
    (tmp_path / HEALTH_CSV).write_text("step,loss\n1,2.3\n")
    assert main(["doctor", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(line.startswith("alexnet: error: ") for line in err)
    assert "missing columns" in err[2]
    with pytest.raises(RunDirError):
        diagnose_run(tmp_path)


def test_doctor_needs_a_run_dir_or_a_model(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["doctor"]) == 2
    assert (
        capsys.readouterr().err
        == "alexnet: error: give a RUN_DIR to diagnose, or --model M for a probe run\n"
    )
    with pytest.raises(SystemExit) as stopped:  # argparse refuses the name as it reads the command line
        main(["doctor", "--model", "nonet"])
    assert stopped.value.code == 2
    err = capsys.readouterr().err
    assert "unknown model" in err and err.count("\n") == 1


@pytest.mark.slow
def test_doctor_probe_run_diagnoses_a_fresh_model(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # caffenet: Caffe's LRN convention (α/n, k=1) and pool before norm, through the same probe
    args = [
        "doctor",
        "--model",
        "caffenet",
        "--steps",
        "6",
        "--every",
        "5",
        "--classes",
        "3",
        "--batch-size",
        "8",
    ]
    args += ["--fc-width", "64", "--init", "he", "--save", str(tmp_path / "probe"), "--json"]
    assert main(args) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["summary"]["model"] == "caffenet" and data["summary"]["last_step"] == 6
    assert (tmp_path / "probe" / "health.png").is_file()
    assert (tmp_path / "probe" / "config.json").is_file()


def test_probe_reads_an_imagenet_layout_folder_of_photographs(tmp_path: Path) -> None:
    import skimage.data
    from PIL import Image

    root = tmp_path / "data"
    for cls, images in {"cat": ["chelsea", "astronaut"], "cup": ["coffee", "rocket"]}.items():
        (root / cls).mkdir(parents=True)
        for name in images:
            Image.fromarray(getattr(skimage.data, name)()).save(root / cls / f"{name}.jpg")
    (root / "cup" / "notes.txt").write_text("not an image")
    cfg = ProbeConfig(steps=4, every=2, batch_size=4, fc_width=32, data=str(root))
    mon = probe(cfg, tmp_path / "run")
    assert [r.num_classes for r in mon.records] == [2, 2]
    assert json.loads((tmp_path / "run" / "config.json").read_text())["num_classes"] == 2
    with pytest.raises(DataError, match="at least two class folders"):
        probe(ProbeConfig(steps=1, data=str(root / "cat")), tmp_path / "run2")


def _record(step: int, loss: float, lr: float, update: float) -> HealthRecord:
    layers = [
        LayerHealth(
            name,
            act_mean=0.1,
            act_std=1.0,
            dead_frac=0.1,
            weight_norm=10.0,
            grad_norm=1.0,
            update_ratio=update,
        )
        for name in ("conv1", "conv2", "fc6", "fc7", "fc8")
    ]
    return HealthRecord(step=step, loss=loss, lr=lr, num_classes=10, layers=layers)


def _synthetic_run(tmp_path: Path, records: list[HealthRecord]) -> Run:
    return Run(tmp_path, records, {}, {}, [], [])


def test_a_plateau_at_chance_that_training_left_is_a_note_not_a_problem(tmp_path: Path) -> None:
    chance = math.log(10)
    losses = [2.8, 2.5, chance, chance, chance, 2.0, 1.5, 1.0]  # what `make demo`'s first epochs look like
    run = _synthetic_run(tmp_path, [_record(1 + 50 * i, loss, 1e-3, 1e-3) for i, loss in enumerate(losses)])
    found = {d.code: d for d in diagnose(run)}
    assert found["stuck_at_chance"].severity == "note"
    assert not any(d.severity == "problem" for d in found.values())


def test_a_loss_still_at_chance_at_the_end_is_a_problem(tmp_path: Path) -> None:
    chance = math.log(10)
    run = _synthetic_run(tmp_path, [_record(1 + 50 * i, chance, 1e-3, 1e-3) for i in range(6)])
    stuck = [d for d in diagnose(run) if d.code == "stuck_at_chance"]
    assert stuck and stuck[0].severity == "problem"


def test_updates_shrinking_in_every_layer_as_the_schedule_anneals_are_not_vanishing_gradients() -> None:
    th = Thresholds()
    annealed = _record(1851, 0.97, 3e-7, 1e-6)  # cosine decay at its end: every layer moves ~1e-6 per step
    assert check_vanishing(annealed, th) == []
    one_stuck = _record(1851, 0.97, 1e-3, 1e-3)
    one_stuck.layers[0].update_ratio = 1e-7  # conv1 stands still while the others move
    assert [f.layer for f in check_vanishing(one_stuck, th)] == ["conv1"]


def test_one_layer_slowest_at_the_end_of_a_cosine_schedule_is_annealed_not_vanishing() -> None:
    """`make demo`'s last steps: lr at 0.3 % of its peak; AdamW's steps are smallest relative to fc6's large
    weight norm, which then dips under the fixed threshold while the conv layers still move more."""
    th = Thresholds()
    end = _record(1801, 0.9, 3.4e-6, 1e-4)
    end.layers[2].update_ratio = 9.9e-6  # fc6
    assert check_vanishing(end, th, peak_lr=1e-3) == []
    # the same step sizes at the peak rate: fc6 stands still while the rest moves
    at_peak = _record(1801, 0.9, 1e-3, 1e-4)
    at_peak.layers[2].update_ratio = 9.9e-6
    assert [f.layer for f in check_vanishing(at_peak, th, peak_lr=1e-3)] == ["fc6"]
    # a layer frozen far below the annealed threshold is still reported
    end.layers[2].update_ratio = 1e-12
    assert [f.layer for f in check_vanishing(end, th, peak_lr=1e-3)] == ["fc6"]


@pytest.mark.parametrize(
    "flag",
    [
        ["--fc-width", "0"],
        ["--fc-width", "-3"],
        ["--init-std", "-1"],
        ["--init-std", "nan"],
        ["--init-std", "inf"],
        ["--bias", "nan"],
        ["--lr", "inf"],
        ["--lr", "nan"],
    ],
)
def test_bad_probe_numbers_are_refused_up_front_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: list[str]
) -> None:
    save = tmp_path / "probe"
    assert main(["doctor", "--model", "alexnet", "--save", str(save), *flag]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"alexnet: error: {flag[0]} must be")
    assert not save.exists()  # refused before the probe started


def test_a_probe_never_saves_over_a_run_or_a_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--save must be a new (or empty) folder: a run folder there keeps its config and health log."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    afile = tmp_path / "notes.txt"
    afile.write_text("x")
    for save, message in [
        (run, "is a folder that is not empty"),
        (afile, "is a file"),
        (afile / "sub", "notes.txt is a file, not a folder"),
    ]:
        assert main(["doctor", "--model", "alexnet", "--steps", "1", "--save", str(save)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err
    assert (run / "config.json").read_text() == "{}" and sorted(p.name for p in run.iterdir()) == [
        "config.json"
    ]


def test_flags_that_would_not_apply_are_refused_not_ignored(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert (
        main(["doctor", str(tmp_path), "--steps", "5", "--no-plot"]) == 2
    )  # checked before the folder is read
    assert "--steps: for a probe run (--model M) only" in capsys.readouterr().err
    save = tmp_path / "probe"
    assert main(["doctor", "-m", "alexnet", "--recipe", "demo", "--fc-width", "16", "--save", str(save)]) == 2
    assert "--fc-width: the recipe sets these" in capsys.readouterr().err
    assert not save.exists()


def test_the_probe_runs_on_the_device_asked_for_and_a_missing_one_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    save = tmp_path / "probe"
    args = ["doctor", "-m", "alexnet", "--steps", "2", "--every", "1", "--classes", "2", "--batch-size", "4"]
    args += ["--fc-width", "16", "--no-plot", "--json", "--save", str(save)]
    assert main([*args, "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["summary"]["last_step"] == 2
    assert json.loads((save / "config.json").read_text())["device"] == "cpu"  # what ran, not what was asked

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "tpu"):
        other = tmp_path / device
        assert main([*args[:-1], str(other), "--device", device]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("alexnet: error: ") and repr(device) in err
        assert not other.exists()  # refused before the probe's folder was made
    # a finished run's diagnosis has no device to choose
    assert main(["doctor", str(save), "--device", "cpu", "--no-plot"]) == 2
    assert "--device: for a probe run (--model M) only" in capsys.readouterr().err


def test_a_single_health_step_is_too_few_to_claim_the_network_learns(tmp_path: Path) -> None:
    run = _synthetic_run(tmp_path, [_record(1, 2.0, 1e-3, 1e-3)])
    verdict = diagnose(run)[0]
    assert (verdict.code, verdict.severity) == ("undetermined", "note")
    assert verdict.evidence[:2] == [
        "one health step (step 1): a trend needs two; train longer or measure more often "
        "(doctor --every, train --health-every)",
        "loss 2.0000 at step 1",
    ]
    text = format_report(Report(run, diagnose(run)))
    assert "is learning" not in text and "no sign yet that the network learns" in text


def test_a_loss_that_has_not_fallen_is_no_sign_of_learning(tmp_path: Path) -> None:
    run = _synthetic_run(tmp_path, [_record(1 + 10 * i, 2.0, 1e-3, 1e-3) for i in range(3)])
    verdict = diagnose(run)[0]
    assert verdict.code == "undetermined" and "has not fallen between steps 1 and 21" in verdict.evidence[0]
    falling = _synthetic_run(tmp_path, [_record(1 + 10 * i, 2.0 - 0.5 * i, 1e-3, 1e-3) for i in range(3)])
    assert diagnose(falling)[0].code == "healthy"


def test_a_loss_blow_up_with_no_layer_over_the_update_limit_is_titled_without_an_empty_layer_list(
    tmp_path: Path,
) -> None:
    # step 2's loss is far above ln(10), but every layer's update ratio is ordinary: no layer to name
    run = _synthetic_run(tmp_path, [_record(1, 2.3, 1e-2, 1e-3), _record(2, 30.0, 1e-2, 1e-3)])
    exploding = [d for d in diagnose(run) if d.code == "exploding_gradients"]
    assert [(d.severity, d.title, d.layers) for d in exploding] == [
        ("problem", "Learning rate too high: the loss exploded", [])
    ]
    named = _synthetic_run(tmp_path, [_record(1, 2.3, 1e-2, 1e-3), _record(12, 30.0, 1e-2, 1e-3)])
    named.records[1].layers[-1].update_ratio = 0.5  # fc8 rewritten by one step
    titles = [d.title for d in diagnose(named) if d.code == "exploding_gradients"]
    assert titles == ["Learning rate too high: exploding updates in fc8"]


def test_every_flag_a_remedy_names_is_a_flag_of_alexnet_train() -> None:
    import re

    from alexnet.cli import build_parser
    from alexnet.diagnostics.rules import REMEDIES

    train = build_parser()._subparsers._group_actions[0].choices["train"]  # type: ignore[union-attr]
    flags = {s for a in train._actions for s in a.option_strings}
    named = {f for text in REMEDIES.values() for f in re.findall(r"--[a-z][a-z-]*", text)}
    assert {"--grad-clip", "--bias-init", "--init", "--lr", "--warmup-steps"} <= named
    assert named <= flags


def test_a_run_trained_with_bias_init_is_not_reported_as_biases_of_one(tmp_path: Path) -> None:
    from alexnet.diagnostics.doctor import _init_facts

    meta = {
        "model": {"convs": [{"weight_std": 0.01, "bias": 1.0}], "fcs": [{"weight_std": 0.01, "bias": 1.0}]}
    }
    run = Run(tmp_path, [_record(1, 2.3, 1e-2, 1e-3)], meta, {"init": "paper", "bias_init": 0.1}, [], [])
    assert _init_facts(run)[1] == 0.1
    run.config.pop("bias_init")
    assert _init_facts(run)[1] == 1.0
