"""pixelcascade serve: the web page (serve.py) on a local port."""

from __future__ import annotations

import argparse

from .common import device_and_dtype
from .flags import DTYPE_HELP, at_least_1, encoder_flags, offload_flag


def add_commands(sub) -> None:
    s = sub.add_parser("serve", help="the web page: generate, edit and upscale in the browser (Gradio)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="A local web page for the model, with tabs to generate (each stage's images "
                                   "shown as they land), change a picture, repaint what you paint over, and upscale "
                                   "with any stage II. Each image downloads as the PNG with its JSON sidecar, and the "
                                   "page shows the `pixelcascade` line that makes the same image. One job runs at "
                                   "a time. Needs Gradio (pip install -e \".[ui]\").",
                       epilog="examples:\n  pixelcascade serve\n  pixelcascade serve --model shapes --port 8080\n"
                              "  pixelcascade serve --host 0.0.0.0    # reachable from other machines: a warning")
    s.add_argument("--model", default="shapes", help="what `pixelcascade generate --model` takes (default: shapes)")
    s.add_argument("--host", default="127.0.0.1", help="the address to listen on (default: this machine only)")
    s.add_argument("--port", type=at_least_1, default=7860)
    s.add_argument("--share", action="store_true", help="also make a public Gradio share link (never by default)")
    encoder_flags(s)
    s.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto")
    s.add_argument("--dtype", default="auto", help=f"UNet weights: {DTYPE_HELP} (default: auto)")
    offload_flag(s)
    s.set_defaults(fn=cmd_serve)


def cmd_serve(a) -> int:
    from ..serve import serve
    device, dtype = device_and_dtype(a)
    serve(a.model, host=a.host, port=a.port, share=a.share, device=device, dtype=dtype, text_encoder=a.text_encoder,
          text_encoder_dtype=a.text_encoder_dtype, offload=a.offload or False)
    return 0
