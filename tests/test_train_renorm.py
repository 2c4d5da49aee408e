"""ZF §3's filter renormalisation inside the real training loop (the operator itself: tests/test_models.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from test_train_support import TINY, register_tiny, tiny_data


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    register_tiny()
    return tiny_data(tmp_path_factory.mktemp("data"))


def test_the_training_loop_renormalises_conv_filters_after_every_update(tmp_path, data):
    """ZF §3: "each filter in the convolutional layers whose RMS value exceeds a fixed radius of 1e-1 is
    renormalized to this fixed radius" — after each update, not only once. The tiny model's conv filters start at
    RMS ≈ 0.1, so a radius of 0.05 binds from the first step on."""
    from torch import nn

    from alexnet.train.callbacks import Callback

    class FilterRms(Callback):
        def __init__(self) -> None:
            self.largest: list[float] = []

        def on_step_end(self, ctx):
            convs = [m.weight for m in ctx.model.modules() if isinstance(m, nn.Conv2d)]
            self.largest.append(max(float(w.pow(2).mean(dim=(1, 2, 3)).sqrt().max()) for w in convs))

    from alexnet.train.loop import train
    from alexnet.train.recipes import resolve_recipe

    def run(out: Path, renorm: float) -> list[float]:
        seen = FilterRms()
        cfg = resolve_recipe(
            "zeiler2013", model=TINY.name, data=str(data), out=str(out), input_size=63, batch_size=4,
            workers=0, device="cpu", max_steps=4, renorm_rms=renorm, lr=0.05,
        )  # fmt: skip
        train(cfg, callbacks=[seen], progress=False)
        return seen.largest

    capped = run(tmp_path / "capped", 0.05)
    assert len(capped) == 4 and all(rms == pytest.approx(0.05, rel=1e-5) for rms in capped)
    loose = run(tmp_path / "loose", 1.0)  # a radius that never binds: the same steps leave filters above 0.05
    assert all(rms > 0.06 for rms in loose)
