"""Latency of the explorer's requests, measured through the real app (``python -m alexnet.serve.bench``).

What a click costs after an image is chosen: the first analysis of the image (one forward pass capturing every
conv layer, the top-5), then per channel click its JSON, enlarged map and deconvnet projection — the three
requests the page sends. Numbers go to docs/serve.md; nothing here is asserted by a test.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

CPU: list[float] = []  # process CPU time of each measured call (all threads), ms


def _ms(fn: Callable[[], object], repeat: int = 1) -> list[float]:
    """Wall-clock ms of each call; the process CPU ms go to :data:`CPU` (on a busy machine wall time is
    inflated by other processes, CPU time is not: with T threads a quiet run takes between CPU/T and CPU)."""
    out = []
    for _ in range(repeat):
        cpu, start = time.process_time(), time.perf_counter()
        fn()
        out.append(1000 * (time.perf_counter() - start))
        CPU.append(1000 * (time.process_time() - cpu))
    return out


def main(argv: list[str] | None = None) -> None:
    import torch
    from fastapi.testclient import TestClient

    from alexnet import create_model
    from alexnet.serve.app import create_app
    from alexnet.serve.state import Slot

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default="alexnet")
    p.add_argument("--sample", default="chelsea")
    p.add_argument("--clicks", type=int, default=12, help="channel clicks per layer")
    args = p.parse_args(argv)

    torch.manual_seed(0)
    app = create_app([Slot("a", create_model(args.model), "random initialisation", trained=False)])
    with TestClient(app) as c:

        def ok(url: str, method: str = "get") -> object:
            r = getattr(c, method)(url)
            r.raise_for_status()
            return r.json() if r.headers["content-type"].startswith("application/json") else r.content

        image = ok(f"/api/samples/{args.sample}", "post")["image_id"]  # type: ignore[index]
        base = f"/api/models/a/images/{image}"
        first = _ms(lambda: ok(base))[0]
        grids = _ms(
            lambda: [
                ok(f"{base}/layers/{layer}/grid.png") for layer in app.state.server.slot("a").conv_layers
            ]
        )
        load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
        print(
            f"torch threads: {torch.get_num_threads()}, CPUs: {os.cpu_count()}, load average {load:.1f}, "
            f"model {args.model}, sample {args.sample}"
        )
        print(f"first analysis (forward pass, all conv maps, top-5):  {first:7.1f} ms")
        print(f"five activation grids (PNG):                           {grids[0]:7.1f} ms")
        for layer in app.state.server.slot("a").conv_layers:
            channels = ok(base)["layers"]  # type: ignore[index]
            n = next(entry["shape"][0] for entry in channels if entry["layer"] == layer)
            picks = [round(i * (n - 1) / max(1, args.clicks - 1)) for i in range(args.clicks)]
            times = []
            CPU.clear()
            for ch in picks:
                url = f"{base}/layers/{layer}/channels/{ch}"
                times += _ms(lambda url=url: (ok(url), ok(url + "/map.png"), ok(url + "/deconv.png")))
            print(
                f"click a {layer} channel (JSON + map + deconv): median {statistics.median(times):6.1f} ms, "
                f"max {max(times):6.1f} ms over {len(times)} channels; CPU time median {statistics.median(CPU):6.1f} ms"
            )


if __name__ == "__main__":
    main()
