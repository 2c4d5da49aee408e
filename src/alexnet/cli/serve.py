"""``alexnet serve``: the interactive explorer in the browser (a local web app)."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from alexnet.cli._common import WEIGHTS_HELP, CommandError, add_command, add_device_argument, device_from_args


def register(sub: Any) -> None:
    p = add_command(
        sub,
        "serve",
        "explore activations, deconvnet projections, top-9 patches and occlusion in the browser",
        "A local web app (DeepVis-style): pick an image, see the top-5, every conv layer's activation maps; "
        "click a channel for its enlarged map, its deconvnet projection (Zeiler & Fergus §2.1) and its top-9 "
        "patches (when `alexnet visualize top9` output lies in top9/ beside the weights or in the run folder); "
        "occlusion maps on demand (ZF Fig. 7); the per-layer parameter/computation table. Two models side by "
        "side with --model2/--weights2. Bound to 127.0.0.1 unless --host says otherwise.",
    )
    p.add_argument("--model", "-m", help="model name; alone (no weights) it runs on random initialisation")
    p.add_argument("--weights", "-w", help=WEIGHTS_HELP)
    p.add_argument("--run", help="a training run folder (uses its model.safetensors and top9/)")
    p.add_argument("--model2", help="a second model shown side by side (e.g. zfnet beside alexnet)")
    p.add_argument("--weights2", help="weights of the second model")
    p.add_argument("--run2", help="run folder of the second model")
    p.add_argument(
        "--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1: this machine only)"
    )
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0 picks a free one)")
    p.add_argument("--open", action="store_true", help="open the page in the default browser")
    add_device_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import socket

    from alexnet.serve import load_slot
    from alexnet.serve.app import LOCAL_HOSTS

    if args.model is None and args.weights is None and args.run is None:
        raise CommandError("name a model: --model M [--weights FILE], or --run DIR")
    if not 0 <= args.port <= 65535:
        raise CommandError(f"--port {args.port} is out of range (0–65535)")
    device = device_from_args(args)
    slots = [load_slot("a", args.model, args.weights, args.run)]
    if args.model2 or args.weights2 or args.run2:
        slots.append(load_slot("b", args.model2, args.weights2, args.run2))
    for slot in slots:
        slot.model.to(device)
    # Bind first, so a taken port is one clear line (not a uvicorn traceback) and --port 0 can report its port.
    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as e:
        sock.close()
        raise CommandError(f"cannot listen on {args.host}:{args.port} ({e.strerror or e})") from None
    if args.host not in LOCAL_HOSTS:  # once it is bound: a host that cannot be is the error alone
        print(
            f"alexnet serve: warning: binding to {args.host} makes the explorer reachable from other machines; "
            "it has no authentication",
            file=sys.stderr,
        )
    port = sock.getsockname()[1]
    host = f"[{args.host}]" if ":" in args.host else args.host
    url = f"http://{host}:{port}/"
    for s in slots:
        print(f"{s.key}: {s.name} — {'weights ' + s.source if s.trained else 'random initialisation'}")
    print(f"serving on {url}  (Ctrl-C to stop)", flush=True)
    serve_socket(slots, sock, open_url=url if args.open else None, local=args.host in LOCAL_HOSTS)
    return 0


def serve_socket(slots: list[Any], sock: Any, open_url: str | None = None, local: bool = True) -> None:
    """Run uvicorn on an already bound socket until interrupted; ``local``: answer only requests addressed to
    this machine (a bind to 127.0.0.1 or ::1)."""
    import threading
    import webbrowser

    import uvicorn

    from alexnet.serve.app import LOCAL_HOSTS, create_app

    app = create_app(slots, allowed_hosts=LOCAL_HOSTS if local else None)
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    server = uvicorn.Server(config)
    if open_url:
        threading.Timer(1.0, webbrowser.open, args=(open_url,)).start()
    server.run(sockets=[sock])
