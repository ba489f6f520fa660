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
import time
from pathlib import Path

from .errors import PixelcascadeError
from .inputs import DEFAULT_MAX_PIXELS

SAMPLERS = ("ddpm", "ddim", "dpmpp_2m")


def import_gradio():
    try:
        import gradio as gr
    except ImportError:
        raise PixelcascadeError("the web page needs Gradio: pip install -e \".[ui]\" (or pip install gradio)") from None
    return gr


def command_line(model: str, prompt: str, negative: str, seed: int, num_images: int, steps: str, steps_ii: str,
                 guidance: float, sampler: str, *, command: str = "generate", inputs=(), strength=None,
                 aug_level=None, layout_guidance=None) -> str:
    """The `pixelcascade` line that makes the same images."""
    args = ["pixelcascade", command, *[p for p in inputs if p], prompt, "--model", model, "--seed", str(seed),
            "--num-images", str(num_images), "--guidance", f"{guidance:g}", "--sampler", sampler]
    if strength is not None:
        args += ["--strength", f"{strength:g}"]
    if aug_level is not None:
        args += ["--aug-level", f"{aug_level:g}"]
    if layout_guidance is not None:
        args += ["--layout-guidance", f"{layout_guidance:g}"]
    if steps:
        args += ["--steps", steps]
    if steps_ii:
        args += ["--steps-ii", steps_ii]
    if negative.strip():
        args += ["--negative-prompt", negative]
    args += ["-o", "out.png" if num_images == 1 else "outs/"]
    return shlex.join(args)


class Generator:
    """The page's work: a cascade call, each image written as PNG + its settings record (the CLI's sidecar) into
    a folder the page serves for download, and the `pixelcascade` line that makes the same images."""

    def __init__(self, cascade, model: str, out_dir: Path):
        self.cascade, self.model, self.out_dir = cascade, model, Path(out_dir)

    def __call__(self, prompt: str, negative: str, seed, num_images, steps: str, steps_ii: str, guidance,
                 sampler: str, aug_level=None, layout_guidance=None, progress=None, *, image=None, mask=None,
                 strength: float = 1.0):
        """``image`` / ``mask`` (uint8 arrays): image-to-image, inpainting (white = repaint)."""
        import numpy as np

        from .images import save_png
        if image is not None and not 0 < float(strength) <= 1:
            raise PixelcascadeError(f"strength {strength}: must be in (0, 1]; 0.3 keeps most of the image")
        seed, num_images = int(seed), int(num_images)
        n_stages = len(self.cascade.stages)
        steps_list = [steps or None] + [steps_ii or None] * (n_stages - 1)
        total = sum(st.num_steps(s) for st, s in zip(self.cascade.stages, self.cascade.stage_settings(
            num_inference_steps=steps_list)))

        shown = [-1.0, -1]  # when the bar last moved, and for which stage

        def on_step(_pipe, step, _t, kw):  # at most 4 updates a second: each one redraws the page
            now = time.monotonic()
            if progress is not None and (now - shown[0] > 0.25 or kw["stage"] != shown[1]):
                shown[:] = [now, kw["stage"]]
                progress(step / total, desc=f"stage {kw['stage'] + 1} of {n_stages}")
        edit = {}
        if image is not None:
            init, mask_t = self.cascade.edit_inputs(image, mask)
            edit = dict(image=init, mask_image=mask_t, strength=float(strength))
        out = self.cascade(prompt, seed=seed, num_images_per_prompt=num_images, num_inference_steps=steps_list,
                           guidance_scale=float(guidance), sampler=[sampler] * n_stages,  # as --sampler: every stage
                           aug_level=None if n_stages == 1 else float(aug_level),
                           layout_guidance=float(layout_guidance), negative_prompt=negative or None,
                           batch_size=num_images, callback_on_step_end=on_step, progress=False, **edit)
        run = Path(tempfile.mkdtemp(prefix="run-", dir=self.out_dir))
        files, inputs = [], {}
        if image is not None:  # the inputs beside the outputs, so the command line can be run on them
            from PIL import Image
            Image.fromarray(image).save(run / "input.png")
            inputs["init_image"] = str(run / "input.png")
            if mask is not None:
                Image.fromarray(mask).save(run / "mask.png")
                inputs["mask"] = str(run / "mask.png")
        for i, (img, record) in enumerate(zip(out.images, out.settings)):
            path = run / f"{i:04d}-seed{record['seed']}.png"
            save_png(np.asarray(img), path, {**record, **inputs})
            files += [str(path), str(path.with_suffix(".json"))]
        command = "generate" if image is None else "inpaint" if mask is not None else "img2img"
        line = command_line(self.model, prompt, negative, seed, num_images, steps, steps_ii, float(guidance), sampler,
                            command=command, inputs=[inputs.get("init_image"), inputs.get("mask")],
                            strength=float(strength) if image is not None else None,
                            aug_level=None if n_stages == 1 else float(aug_level),
                            layout_guidance=float(layout_guidance))
        return [f for f in files if f.endswith(".png")], files, line

    def upscale(self, image, prompt: str, seed, steps: str, guidance, progress=None):
        """The second stage on ``image`` (uint8), x2, as `pixelcascade upscale IMAGE --model MODEL/stage2`."""
        import numpy as np

        from .images import save_png
        from .pipeline import from_uint8
        up = _upscaler(self.cascade)
        low = from_uint8(image)
        size = up.upscaled_size("uploaded", low.shape[2], low.shape[3], 2.0, DEFAULT_MAX_PIXELS)
        out = up(prompt or "a picture", seed=int(seed), image=low, height=size[0], width=size[1],
                 num_inference_steps=steps or None, guidance_scale=float(guidance), progress=False)
        run = Path(tempfile.mkdtemp(prefix="run-", dir=self.out_dir))
        from PIL import Image
        Image.fromarray(image).save(run / "input.png")
        path = run / f"upscaled-seed{int(seed)}.png"
        save_png(np.asarray(out.images[0]), path, {**out.settings[0], "input_image": str(run / "input.png")})
        args = ["pixelcascade", "upscale", str(run / "input.png"), "--prompt", prompt or "a picture",
                "--model", self.model, "--seed", str(int(seed)), "--guidance", f"{float(guidance):g}"]
        args += ["--steps", steps] if steps else []
        return [str(path)], [str(path), str(path.with_suffix(".json"))], shlex.join(args + ["-o", "big.png"])


def _upscaler(cascade):
    """The cascade's second stage on its own, starting from the user's image (as `pixelcascade upscale`)."""
    from .api import Cascade
    return Cascade(cascade.stages[1:2], cascade.encoder, starts_from_image=True, source=cascade.source,
                   text_encoder=cascade.text_encoder)


class TorchThread:
    """One thread that does all of the page's torch work, model loading included.

    Gradio runs each event in a worker thread; torch's OpenMP pool, once started by one thread, runs another
    thread's parallel regions at about one core's speed (measured here: 3.0 s for an image the CLI makes in 2.0 s,
    and 1.9 s when one thread does everything). So the model is loaded in this thread and every job runs in it:
    also the page's one queue (a job waits for the one before)."""

    def __init__(self):
        from concurrent.futures import ThreadPoolExecutor
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pixelcascade-torch")

    def run(self, fn, *args, **kwargs):
        import contextvars
        ctx = contextvars.copy_context()  # the caller's context (Gradio's progress bar lives in it)
        return self._pool.submit(ctx.run, fn, *args, **kwargs).result()


def _controls(gr, cascade_stages, tab: str) -> dict:
    """The settings every tab shares, ids prefixed by the tab ("" for Generate)."""
    pre = f"{tab}-" if tab else ""
    defaults = cascade_stages[0].settings
    c = {"prompt": gr.Textbox(label="Prompt", placeholder="three red circles to the left of a blue square",
                              elem_id=f"{pre}prompt"),
         "negative": gr.Textbox(label="Negative prompt", elem_id=f"{pre}negative")}
    with gr.Row():
        c["seed"] = gr.Number(label="Seed", value=0, precision=0, minimum=0, elem_id=f"{pre}seed")
        c["dice"] = gr.Button("🎲", elem_id=f"{pre}dice", scale=0)
        c["num_images"] = gr.Slider(1, 8, value=1, step=1, label="Images", elem_id=f"{pre}num_images")
    with gr.Row():
        c["steps"] = gr.Textbox(label="Stage I steps", value=str(defaults.num_steps), elem_id=f"{pre}steps")
        c["steps_ii"] = gr.Textbox(label="Later stages' steps", value="", placeholder="the model's",
                                   elem_id=f"{pre}steps_ii")
    with gr.Row():
        c["guidance"] = gr.Number(label="Guidance", value=defaults.guidance_scale, minimum=0, elem_id=f"{pre}guidance")
        c["sampler"] = gr.Dropdown(list(SAMPLERS), value=defaults.sampler, label="Sampler", elem_id=f"{pre}sampler")
    with gr.Row():
        sr = [st for st in cascade_stages if st.is_super_res]
        c["aug_level"] = gr.Slider(0, 1, value=sr[0].settings.aug_level if sr else 0.0, step=0.05,
                                   label="Aug level (later stages)", elem_id=f"{pre}aug_level", interactive=bool(sr))
        c["layout_guidance"] = gr.Number(label="Layout guidance (0 = off)", value=defaults.layout_guidance, minimum=0,
                                         elem_id=f"{pre}layout_guidance")
    c["dice"].click(lambda: random.randrange(2 ** 31), outputs=c["seed"])
    return c


def _results(gr, tab: str) -> list:
    pre = f"{tab}-" if tab else ""
    return [gr.Gallery(label="Images", elem_id=f"{pre}gallery", columns=2),
            gr.File(label="PNG + JSON sidecar", file_count="multiple", elem_id=f"{pre}files"),
            gr.Textbox(label="The same images from the command line", elem_id=f"{pre}command", interactive=False)]


def _settings(c: dict) -> list:
    return [c[k] for k in ("prompt", "negative", "seed", "num_images", "steps", "steps_ii", "guidance", "sampler",
                            "aug_level", "layout_guidance")]


def build_app(cascade, model: str = "shapes", out_dir: str | Path | None = None,
              torch_thread: TorchThread | None = None):
    """The page for ``cascade`` (``model``: how the copied command names it; ``torch_thread``: the thread that
    loaded it, which then runs every job)."""
    gr = import_gradio()
    out_dir = Path(out_dir or tempfile.mkdtemp(prefix="pixelcascade-serve-"))
    generate = Generator(cascade, model, out_dir)

    def shown(fn):  # an error the user can fix is a message on the page, not only a line in the server's log
        def wrapped(*args, progress=gr.Progress()):  # noqa: B008  (Gradio injects the progress bar this way)
            try:
                if torch_thread is not None:
                    return torch_thread.run(fn, *args, progress=progress)
                return fn(*args, progress=progress)
            except PixelcascadeError as e:
                raise gr.Error(str(e)) from None
        return wrapped

    def text_to_image(*args, progress=None):
        return generate(*args, progress)

    def image_to_image(image, strength, *args, progress=None):
        if image is None:
            raise PixelcascadeError("no image: upload the picture to change")
        return generate(*args, progress, image=_rgb(image), strength=strength)

    def inpaint(image, mask, strength, *args, progress=None):
        if image is None or mask is None:
            raise PixelcascadeError("upload the picture and its mask (white = repaint, black = keep)")
        return generate(*args, progress, image=_rgb(image), mask=_grey(mask), strength=strength)

    def upscale(image, prompt, seed, steps, guidance, progress=None):
        if image is None:
            raise PixelcascadeError("no image: upload the picture to upscale")
        return generate.upscale(_rgb(image), prompt, seed, steps, guidance, progress)

    with gr.Blocks(title="pixelcascade") as app:
        gr.Markdown(f"# pixelcascade\nCascaded pixel-space text-to-image diffusion. Model: `{model}`.")
        with gr.Tab("Generate"):
            with gr.Row():
                with gr.Column():
                    c = _controls(gr, cascade.stages, "")
                    go = gr.Button("Generate", variant="primary", elem_id="generate")
                with gr.Column():
                    out = _results(gr, "")
            go.click(shown(text_to_image), _settings(c), out, show_progress="minimal")  # a slim bar: the full one
            # redraws the page many times a second, which on a small machine slows the sampling beside it
        with gr.Tab("Image to image"):
            with gr.Row():
                with gr.Column():
                    image = gr.Image(label="Image", type="numpy", elem_id="i2i-image")
                    strength = gr.Slider(0.05, 1.0, value=0.7, step=0.05, label="Strength (1 = from noise)",
                                         elem_id="i2i-strength")
                    c = _controls(gr, cascade.stages, "i2i")
                    go = gr.Button("Change", variant="primary", elem_id="i2i-generate")
                with gr.Column():
                    out = _results(gr, "i2i")
            go.click(shown(image_to_image), [image, strength, *_settings(c)], out, show_progress="minimal")
        with gr.Tab("Inpaint"):
            with gr.Row():
                with gr.Column():
                    with gr.Row():
                        image = gr.Image(label="Image", type="numpy", elem_id="inp-image")
                        mask = gr.Image(label="Mask (white = repaint)", type="numpy", image_mode="L",
                                        elem_id="inp-mask")
                    strength = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Strength", elem_id="inp-strength")
                    c = _controls(gr, cascade.stages, "inp")
                    go = gr.Button("Repaint", variant="primary", elem_id="inp-generate")
                with gr.Column():
                    out = _results(gr, "inp")
            go.click(shown(inpaint), [image, mask, strength, *_settings(c)], out, show_progress="minimal")
        if len(cascade.stages) > 1:
            with gr.Tab("Upscale"):
                with gr.Row():
                    with gr.Column():
                        image = gr.Image(label="Image (the low-res input)", type="numpy", elem_id="up-image")
                        prompt = gr.Textbox(label="What it shows", value="a picture", elem_id="up-prompt")
                        with gr.Row():
                            seed = gr.Number(label="Seed", value=0, precision=0, minimum=0, elem_id="up-seed")
                            steps = gr.Textbox(label="Steps", value=str(cascade.stages[1].settings.num_steps),
                                               elem_id="up-steps")
                            guidance = gr.Number(label="Guidance", value=cascade.stages[1].settings.guidance_scale,
                                                 minimum=0, elem_id="up-guidance")
                        go = gr.Button("Upscale x2", variant="primary", elem_id="up-generate")
                    with gr.Column():
                        out = _results(gr, "up")
                go.click(shown(upscale), [image, prompt, seed, steps, guidance], out, show_progress="minimal")
    return app.queue(default_concurrency_limit=1)  # one job at a time, the rest wait their turn


def _rgb(image):
    """An uploaded picture as uint8 RGB (transparency on white, greyscale spread to three channels)."""
    import numpy as np
    a = np.asarray(image)
    if a.ndim == 2:
        a = np.stack([a] * 3, axis=-1)
    if a.shape[-1] == 4:
        alpha = a[..., 3:4].astype(np.float32) / 255
        a = (a[..., :3] * alpha + 255 * (1 - alpha)).round()
    return a.astype(np.uint8)


def _grey(mask):
    """An uploaded mask as uint8 greyscale."""
    import numpy as np
    a = np.asarray(mask)
    return a if a.ndim == 2 else _rgb(a).mean(axis=-1).round().astype(np.uint8)


def serve(model: str = "shapes", *, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
          device: str = "cpu", dtype=None, text_encoder: str | None = None) -> None:
    """Load ``model`` and serve the page until interrupted."""
    import sys

    from .api import load
    import_gradio()
    if host not in ("127.0.0.1", "localhost"):
        print(f"warning: serving on {host}: anyone who can reach this machine can use the page (and its CPU/GPU)",
              file=sys.stderr)
    torch_thread = TorchThread()
    cascade = torch_thread.run(load, model, device=device, dtype=dtype, text_encoder=text_encoder)
    app = build_app(cascade, model, torch_thread=torch_thread)
    print(f"pixelcascade serving {model} at http://{host}:{port}", file=sys.stderr, flush=True)
    app.launch(server_name=host, server_port=port, share=share, show_error=True, quiet=True)
