"""The web page (Gradio): generate in the browser, with the settings the CLI takes and the PNG + JSON sidecar it
writes. ``pixelcascade serve`` starts it; ``build_app`` makes it from a loaded cascade (tests drive it in a real
headless Chromium).

One queue runs one job at a time (two browsers do not overload the CPU); bad input is a message on the page; the
server binds to 127.0.0.1 unless told otherwise and never makes a share link unless asked (``--share``).
"""

from __future__ import annotations

import random
import shlex
import tempfile
from pathlib import Path

from .errors import PixelcascadeError

SAMPLERS = ("ddpm", "ddim", "dpmpp_2m")


def import_gradio():
    try:
        import gradio as gr
    except ImportError:
        raise PixelcascadeError("the web page needs Gradio: pip install -e \".[ui]\" (or pip install gradio)") from None
    return gr


def command_line(model: str, prompt: str, negative: str, seed: int, num_images: int, steps: str, steps_ii: str,
                 guidance: float, sampler: str) -> str:
    """The `pixelcascade generate` line that makes the same images."""
    args = ["pixelcascade", "generate", prompt, "--model", model, "--seed", str(seed),
            "--num-images", str(num_images), "--guidance", f"{guidance:g}", "--sampler", sampler]
    if steps:
        args += ["--steps", steps]
    if steps_ii:
        args += ["--steps-ii", steps_ii]
    if negative.strip():
        args += ["--negative-prompt", negative]
    args += ["-o", "out.png" if num_images == 1 else "outs/"]
    return shlex.join(args)


class Generator:
    """The Generate tab's work: a cascade call, each image written as PNG + its settings record (the CLI's
    sidecar) into a folder the page serves for download."""

    def __init__(self, cascade, model: str, out_dir: Path):
        self.cascade, self.model, self.out_dir = cascade, model, Path(out_dir)

    def __call__(self, prompt: str, negative: str, seed, num_images, steps: str, steps_ii: str, guidance,
                 sampler: str, progress=None):
        import numpy as np

        from .images import save_png
        if not prompt or not prompt.strip():
            raise PixelcascadeError("empty prompt: describe the image, e.g. \"two red circles\"")
        seed, num_images = int(seed), int(num_images)
        n_stages = len(self.cascade.stages)
        steps_list = [steps or None] + [steps_ii or None] * (n_stages - 1)
        total = sum(st.num_steps(s) for st, s in zip(self.cascade.stages, self.cascade.stage_settings(
            num_inference_steps=steps_list)))

        def on_step(_pipe, step, _t, kw):
            if progress is not None:
                progress(step / (total * num_images), desc=f"stage {kw['stage'] + 1} of {n_stages}")
        out = self.cascade(prompt, seed=seed, num_images_per_prompt=num_images, num_inference_steps=steps_list,
                           guidance_scale=float(guidance), sampler=[sampler] * n_stages,  # as --sampler: every stage
                           negative_prompt=negative or None,
                           batch_size=num_images, callback_on_step_end=on_step, progress=False)
        run = Path(tempfile.mkdtemp(prefix="run-", dir=self.out_dir))
        files = []
        for i, (image, record) in enumerate(zip(out.images, out.settings)):
            path = run / f"{i:04d}-seed{record['seed']}.png"
            save_png(np.asarray(image), path, record)
            files += [str(path), str(path.with_suffix(".json"))]
        line = command_line(self.model, prompt, negative, seed, num_images, steps, steps_ii, float(guidance), sampler)
        return [str(f) for f in files if f.endswith(".png")], files, line


def build_app(cascade, model: str = "shapes", out_dir: str | Path | None = None):
    """The page for ``cascade`` (``model``: how the copied command names it)."""
    gr = import_gradio()
    out_dir = Path(out_dir or tempfile.mkdtemp(prefix="pixelcascade-serve-"))
    generate = Generator(cascade, model, out_dir)
    defaults = cascade.stages[0].settings

    def run(prompt, negative, seed, num_images, steps, steps_ii, guidance, sampler,
            progress=gr.Progress()):  # noqa: B008  (Gradio injects the page's progress bar through this default)
        try:
            return generate(prompt, negative, seed, num_images, steps, steps_ii, guidance, sampler, progress)
        except PixelcascadeError as e:  # the user's to fix: shown on the page, not only in the server's log
            raise gr.Error(str(e)) from None

    with gr.Blocks(title="pixelcascade") as app:
        gr.Markdown(f"# pixelcascade\nCascaded pixel-space text-to-image diffusion. Model: `{model}`.")
        with gr.Tab("Generate"):
            with gr.Row():
                with gr.Column():
                    prompt = gr.Textbox(label="Prompt", placeholder="three red circles to the left of a blue square",
                                        elem_id="prompt")
                    negative = gr.Textbox(label="Negative prompt", elem_id="negative")
                    with gr.Row():
                        seed = gr.Number(label="Seed", value=0, precision=0, minimum=0, elem_id="seed")
                        dice = gr.Button("🎲", elem_id="dice", scale=0)
                        num_images = gr.Slider(1, 8, value=1, step=1, label="Images", elem_id="num_images")
                    with gr.Row():
                        steps = gr.Textbox(label="Stage I steps", value=str(defaults.num_steps), elem_id="steps")
                        steps_ii = gr.Textbox(label="Later stages' steps", value="", elem_id="steps_ii",
                                              placeholder="the model's")
                    with gr.Row():
                        guidance = gr.Number(label="Guidance", value=defaults.guidance_scale, minimum=0,
                                             elem_id="guidance")
                        sampler = gr.Dropdown(list(SAMPLERS), value=defaults.sampler, label="Sampler",
                                              elem_id="sampler")
                    button = gr.Button("Generate", variant="primary", elem_id="generate")
                with gr.Column():
                    gallery = gr.Gallery(label="Images", elem_id="gallery", columns=2)
                    files = gr.File(label="PNG + JSON sidecar", file_count="multiple", elem_id="files")
                    command = gr.Textbox(label="The same images from the command line", elem_id="command",
                                         interactive=False)
            dice.click(lambda: random.randrange(2 ** 31), outputs=seed)
            button.click(run, [prompt, negative, seed, num_images, steps, steps_ii, guidance, sampler],
                         [gallery, files, command])
    return app.queue(default_concurrency_limit=1)  # one job at a time, the rest wait their turn


def serve(model: str = "shapes", *, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
          device: str = "cpu", dtype=None, text_encoder: str | None = None) -> None:
    """Load ``model`` and serve the page until interrupted."""
    import sys

    from .api import load
    import_gradio()
    if host not in ("127.0.0.1", "localhost"):
        print(f"warning: serving on {host}: anyone who can reach this machine can use the page (and its CPU/GPU)",
              file=sys.stderr)
    cascade = load(model, device=device, dtype=dtype, text_encoder=text_encoder)
    app = build_app(cascade, model)
    print(f"pixelcascade serving {model} at http://{host}:{port}", file=sys.stderr, flush=True)
    app.launch(server_name=host, server_port=port, share=share, show_error=True, quiet=True)
