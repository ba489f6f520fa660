"""The web page (Gradio): generate, edit and upscale in the browser, with the settings the CLI takes and the PNG +
JSON sidecar it writes. ``pixelcascade serve`` starts it; ``build_app`` makes it from a loaded cascade (tests drive
it in a real headless Chromium).

Every job runs in one torch thread (:class:`TorchThread`), which is also the page's one queue; the job reports its
progress and each stage's images as they land, and the page's handler (a generator in Gradio's worker thread)
passes them on. Bad input is a message on the page; the server binds to 127.0.0.1 unless told otherwise and never
makes a share link unless asked (``--share``).
"""

from __future__ import annotations

import queue
import random
import shlex
import tempfile
import time
from pathlib import Path

from .errors import PixelcascadeError
from .inputs import DEFAULT_MAX_PIXELS

SAMPLERS = ("ddpm", "ddim", "dpmpp_2m")
# While a job streams, Gradio pulses the border of its outputs with an endless animation; repainting it took the
# browser a second of CPU per image, taken from the sampling on a 2-core machine. A still border instead.
PAGE_CSS = ".generating { animation: none !important; }"
ROMAN = ("I", "II", "III", "IV")


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


class Reporter:
    """What a job tells the page while it runs: the progress of the stage it is in (at most two updates a second:
    each one redraws the page, which on a small machine takes CPU from the sampling) and each stage's images."""

    def __init__(self, send, n_stages: int):
        self.send, self.n_stages, self.last = send, n_stages, (-1.0, -1)

    def on_step(self, _pipe, _step, _t, kw) -> None:
        now, stage = time.monotonic(), kw["stage"]
        done = kw["stage_step"] == kw["stage_steps"]
        if now - self.last[0] > 0.5 or stage != self.last[1] or done:
            self.last = (now, stage)
            self.send(("progress", kw["stage_step"] / kw["stage_steps"],
                       f"stage {ROMAN[stage]} of {self.n_stages}: step {kw['stage_step']}/{kw['stage_steps']}"))

    def on_stage_end(self, _pipe, stage, images) -> None:
        from .pipeline import to_uint8
        self.send(("stage", stage, list(to_uint8(images))))


class Jobs:
    """The page's work: a cascade call, each image written as PNG + its settings record (the CLI's sidecar) into
    a folder the page serves for download, and the `pixelcascade` line that makes the same images."""

    def __init__(self, cascade, model: str, out_dir: Path, load_options: dict | None = None):
        self.cascade, self.model, self.out_dir = cascade, model, Path(out_dir)
        self.load_options = load_options or {}  # device, dtype, text encoder: how the page loads another model
        self.upscalers = {}  # stage II models the Upscale tab loaded, by name

    def generate(self, prompt: str, negative: str, seed, num_images, steps: str, steps_ii: str, guidance,
                 sampler: str, aug_level=None, layout_guidance=None, *, send=lambda event: None, image=None,
                 mask=None, strength: float = 1.0):
        """Returns (PNG paths, PNG + JSON paths, command line). ``image`` / ``mask`` (uint8 arrays):
        image-to-image, inpainting (white = repaint); ``send``: where progress and stage images go."""
        import numpy as np

        from .images import save_png
        if image is not None and not 0 < float(strength) <= 1:
            raise PixelcascadeError(f"strength {strength}: must be in (0, 1]; 0.3 keeps most of the image")
        seed, num_images = int(seed), int(num_images)
        n_stages = len(self.cascade.stages)
        report = Reporter(send, n_stages)
        edit = {}
        if image is not None:
            init, mask_t = self.cascade.edit_inputs(image, mask)
            edit = dict(image=init, mask_image=mask_t, strength=float(strength))
        out = self.cascade(prompt, seed=seed, num_images_per_prompt=num_images,
                           num_inference_steps=[steps or None] + [steps_ii or None] * (n_stages - 1),
                           guidance_scale=float(guidance), sampler=[sampler] * n_stages,  # as --sampler: every stage
                           aug_level=None if n_stages == 1 else float(aug_level),
                           layout_guidance=float(layout_guidance), negative_prompt=negative or None,
                           batch_size=num_images, callback_on_step_end=report.on_step,
                           callback_on_stage_end=report.on_stage_end, progress=False, **edit)
        run = Path(tempfile.mkdtemp(prefix="run-", dir=self.out_dir))
        inputs = _save_inputs(run, image, mask)  # beside the outputs, so the command line can be run on them
        files = []
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

    def upscale(self, image, model: str, prompt: str, seed, steps: str, guidance, *, send=lambda event: None):
        """A stage II on ``image`` (uint8), x2, as `pixelcascade upscale IMAGE --model MODEL` (``model``: blank for
        the served model's stage II)."""
        import numpy as np

        from .images import save_png
        from .pipeline import from_uint8
        model = model.strip() or self.model
        up = self.upscaler(model)
        low = from_uint8(image)
        size = up.upscaled_size("uploaded", low.shape[2], low.shape[3], 2.0, DEFAULT_MAX_PIXELS)
        report = Reporter(send, 1)
        out = up(prompt or "a picture", seed=int(seed), image=low, height=size[0], width=size[1],
                 num_inference_steps=steps or None, guidance_scale=float(guidance), progress=False,
                 callback_on_step_end=report.on_step)
        run = Path(tempfile.mkdtemp(prefix="run-", dir=self.out_dir))
        inputs = _save_inputs(run, image, None)
        path = run / f"upscaled-seed{int(seed)}.png"
        save_png(np.asarray(out.images[0]), path, {**out.settings[0], "input_image": inputs["init_image"]})
        args = ["pixelcascade", "upscale", inputs["init_image"], "--prompt", prompt or "a picture",
                "--model", model, "--seed", str(int(seed)), "--guidance", f"{float(guidance):g}"]
        args += ["--steps", steps] if steps else []
        return [str(path)], [str(path), str(path.with_suffix(".json"))], shlex.join(args + ["-o", "big.png"])

    def upscaler(self, model: str):
        """``model``'s stage II as a cascade that starts from an image (loaded once; the served model's is shared)."""
        from .api import Cascade, load_upscaler
        if model not in self.upscalers:
            if model == self.model and len(self.cascade.stages) > 1 and self.cascade.stages[1].is_super_res:
                c = self.cascade
                self.upscalers[model] = Cascade(c.stages[1:2], c.encoder, starts_from_image=True, source=c.source,
                                                text_encoder=c.text_encoder)
            else:
                self.upscalers[model] = load_upscaler(model, **self.load_options)
        return self.upscalers[model]


def _save_inputs(run: Path, image, mask) -> dict:
    """An edit's inputs as PNGs in the run folder; their paths under the sidecar's names."""
    from PIL import Image
    inputs = {}
    if image is not None:
        Image.fromarray(image).save(run / "input.png")
        inputs["init_image"] = str(run / "input.png")
    if mask is not None:
        Image.fromarray(mask).save(run / "mask.png")
        inputs["mask"] = str(run / "mask.png")
    return inputs


class TorchThread:
    """One thread that does all of the page's torch work, model loading included.

    Gradio runs each event in a worker thread; torch's OpenMP pool, once started by one thread, runs another
    thread's parallel regions at about one core's speed (measured here: 3.0 s for an image the CLI makes in 2.0 s,
    and 1.9 s when one thread does everything). So the model is loaded in this thread and every job runs in it:
    also the page's one queue (a job waits for the one before)."""

    def __init__(self):
        from concurrent.futures import ThreadPoolExecutor
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pixelcascade-torch")

    def submit(self, fn, *args, **kwargs):
        return self._pool.submit(fn, *args, **kwargs)

    def run(self, fn, *args, **kwargs):
        return self.submit(fn, *args, **kwargs).result()


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
    c["dice"].click(lambda: random.randrange(2 ** 31), outputs=c["seed"], queue=False)
    return c


def _results(gr, tab: str, stages: bool = True) -> list:
    """A tab's outputs: each stage's images as they land, the results, their files, the command line."""
    pre = f"{tab}-" if tab else ""
    shown = [gr.Gallery(label="Stages, as they land", elem_id=f"{pre}stages", columns=4, height=240, format="png",
                        visible=stages)]
    return shown + [gr.Gallery(label="Images", elem_id=f"{pre}gallery", columns=2),
                    gr.File(label="PNG + JSON sidecar", file_count="multiple", elem_id=f"{pre}files"),
                    gr.Textbox(label="The same images from the command line", elem_id=f"{pre}command",
                               interactive=False, buttons=["copy"])]


def _settings(c: dict) -> list:
    return [c[k] for k in ("prompt", "negative", "seed", "num_images", "steps", "steps_ii", "guidance", "sampler",
                            "aug_level", "layout_guidance")]


def _streamed(gr, torch_thread: TorchThread, job):
    """A Gradio handler (a generator) that runs ``job(*inputs, send=...)`` in the torch thread and yields what it
    sends: each stage's images into the stages gallery, its progress into the bar; then the results, added to the
    page's history (a gr.State, the last input and output). A PixelcascadeError is a message on the page."""
    def handler(*args, progress=gr.Progress()):  # noqa: B008  (Gradio injects the progress bar this way)
        *inputs, history = args
        events = queue.SimpleQueue()
        future = torch_thread.submit(job, *inputs, send=events.put)
        future.add_done_callback(lambda _f: events.put(None))
        stages = []
        while (event := events.get()) is not None:
            if event[0] == "progress":
                progress(event[1], desc=event[2])
            else:
                stages += [(img, f"stage {ROMAN[event[1]]}") for img in event[2]]
                yield stages, gr.skip(), gr.skip(), gr.skip(), gr.skip(), gr.skip()
        try:
            pngs, files, line = future.result()
        except PixelcascadeError as e:
            raise gr.Error(str(e), print_exception=False) from None
        history = (history or []) + [(p, line) for p in pngs]
        yield gr.skip(), pngs, files, line, history[::-1], history
    return handler


def build_app(cascade, model: str = "shapes", out_dir: str | Path | None = None,
              torch_thread: TorchThread | None = None, load_options: dict | None = None):
    """The page for ``cascade`` (``model``: how the copied command names it; ``torch_thread``: the thread that
    loaded it, which then runs every job; ``load_options``: device, dtype and text_encoder for a stage II model
    the Upscale tab loads)."""
    gr = import_gradio()
    out_dir = Path(out_dir or tempfile.mkdtemp(prefix="pixelcascade-serve-"))
    jobs = Jobs(cascade, model, out_dir, load_options)
    torch_thread = torch_thread or TorchThread()

    def image_to_image(image, strength, *settings, send):
        if image is None:
            raise PixelcascadeError("no image: upload the picture to change")
        return jobs.generate(*settings, send=send, image=_rgb(image), strength=strength)

    def inpaint(edited, mask, strength, *settings, send):
        image, drawn = _editor_image_and_mask(edited)
        mask = _combined_mask(drawn, None if mask is None else _grey(mask), image.shape[:2])
        return jobs.generate(*settings, send=send, image=image, mask=mask, strength=strength)

    def upscale(image, up_model, prompt, seed, steps, guidance, *, send):
        if image is None:
            raise PixelcascadeError("no image: upload the picture to upscale")
        return jobs.upscale(_rgb(image), up_model, prompt, seed, steps, guidance, send=send)

    def wire(button, job, inputs, outputs):
        # a slim bar, over the results' gallery only: each bar drawn is the browser's CPU time, taken from the
        # sampling on a small machine
        button.click(_streamed(gr, torch_thread, job), [*inputs, history_state], [*outputs, history, history_state],
                     show_progress="minimal", show_progress_on=outputs[1])

    n_stages = len(cascade.stages)
    with gr.Blocks(title="pixelcascade") as app:
        gr.Markdown(f"# pixelcascade\nCascaded pixel-space text-to-image diffusion. Model: `{model}`.")
        history_state = gr.State([])
        buttons = []
        with gr.Tab("Generate"):
            with gr.Row():
                with gr.Column():
                    c = _controls(gr, cascade.stages, "")
                    go = gr.Button("Generate", variant="primary", elem_id="generate")
                with gr.Column():
                    out = _results(gr, "", stages=n_stages > 1)
            buttons.append((go, jobs.generate, _settings(c), out))
        with gr.Tab("Image to image"):
            with gr.Row():
                with gr.Column():
                    image = gr.Image(label="Image (square)", type="numpy", elem_id="i2i-image")
                    strength = gr.Slider(0.05, 1.0, value=0.7, step=0.05, label="Strength (1 = from noise)",
                                         elem_id="i2i-strength")
                    c = _controls(gr, cascade.stages, "i2i")
                    go = gr.Button("Change", variant="primary", elem_id="i2i-generate")
                with gr.Column():
                    out = _results(gr, "i2i", stages=n_stages > 1)
            buttons.append((go, image_to_image, [image, strength, *_settings(c)], out))
        with gr.Tab("Inpaint"):
            with gr.Row():
                with gr.Column():
                    editor = gr.ImageEditor(
                        label="Image (square): paint over what to repaint", type="numpy", elem_id="inp-image",
                        brush=gr.Brush(colors=["#ffffff"], default_color="#ffffff", color_mode="fixed",
                                       default_size=max(3, cascade.stages[-1].cfg.image_size // 12)),  # pixels:
                        # Gradio's "auto" is 25, a third of a 64 px picture
                        layers=False, transforms=())
                    with gr.Accordion("or upload a mask (white = repaint)", open=False):
                        mask = gr.Image(label="Mask", type="numpy", image_mode="L", elem_id="inp-mask")
                    strength = gr.Slider(0.05, 1.0, value=1.0, step=0.05, label="Strength", elem_id="inp-strength")
                    c = _controls(gr, cascade.stages, "inp")
                    go = gr.Button("Repaint", variant="primary", elem_id="inp-generate")
                with gr.Column():
                    out = _results(gr, "inp", stages=n_stages > 1)
            buttons.append((go, inpaint, [editor, mask, strength, *_settings(c)], out))
        with gr.Tab("Upscale"):
            with gr.Row():
                with gr.Column():
                    image = gr.Image(label="Image (the low-res input)", type="numpy", elem_id="up-image")
                    up_model = gr.Textbox(label="Stage II model", value="", elem_id="up-model",
                                          placeholder=f"blank: the stage II of {model}; or any stage II file or folder")
                    prompt = gr.Textbox(label="What it shows", value="a picture", elem_id="up-prompt")
                    sr = cascade.stages[1] if n_stages > 1 else None
                    with gr.Row():
                        seed = gr.Number(label="Seed", value=0, precision=0, minimum=0, elem_id="up-seed")
                        steps = gr.Textbox(label="Steps", value=str(sr.settings.num_steps) if sr else "",
                                           placeholder="the model's", elem_id="up-steps")
                        guidance = gr.Number(label="Guidance", value=sr.settings.guidance_scale if sr else 4.0,
                                             minimum=0, elem_id="up-guidance")
                    go = gr.Button("Upscale x2", variant="primary", elem_id="up-generate")
                with gr.Column():
                    out = _results(gr, "up", stages=False)
            buttons.append((go, upscale, [image, up_model, prompt, seed, steps, guidance], out))
        history = gr.Gallery(label="Made since this page opened (newest first)", elem_id="history", columns=8,
                             height=200, object_fit="contain")
        for go, job, inputs, outputs in buttons:
            wire(go, job, inputs, outputs)
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


def _editor_image_and_mask(value):
    """The image editor's picture (uint8 RGB) and what was painted on it (uint8: the strokes' opacity), or a
    message when no picture was uploaded."""
    import numpy as np
    if not value or value.get("background") is None:
        raise PixelcascadeError("no image: upload the picture to repaint, then paint over the part to change")
    image = _rgb(value["background"])
    layers = [np.asarray(x) for x in value.get("layers") or [] if x is not None]
    drawn = np.zeros(image.shape[:2], np.uint8)
    for layer in layers:
        if layer.ndim == 3 and layer.shape[-1] == 4 and layer.shape[:2] == drawn.shape:
            drawn = np.maximum(drawn, layer[..., 3])
    return image, drawn


def _combined_mask(drawn, uploaded, size):
    """The strokes painted on the image and an uploaded mask together (white = repaint)."""
    import numpy as np
    if uploaded is not None:
        if uploaded.shape[:2] != tuple(size):
            raise PixelcascadeError(f"the mask is {uploaded.shape[1]}x{uploaded.shape[0]} but the image is "
                                    f"{size[1]}x{size[0]}: the mask must have the image's size (white = repaint)")
        drawn = np.maximum(drawn, uploaded)
    if drawn.max() <= 127:
        raise PixelcascadeError("nothing to repaint: paint over the part of the image to change (or upload a mask)")
    return drawn


def serve(model: str = "shapes", *, host: str = "127.0.0.1", port: int = 7860, share: bool = False,
          device: str = "cpu", dtype=None, text_encoder: str | None = None, text_encoder_dtype: str | None = None,
          offload: str | bool = False) -> None:
    """Load ``model`` and serve the page until interrupted (``text_encoder_dtype``, ``offload``: as
    :func:`pixelcascade.load` takes them)."""
    import sys

    from .api import load
    import_gradio()
    if host not in ("127.0.0.1", "localhost"):
        print(f"warning: serving on {host}: anyone who can reach this machine can use the page (and its CPU/GPU)",
              file=sys.stderr)
    torch_thread = TorchThread()
    cascade = torch_thread.run(load, model, device=device, dtype=dtype, text_encoder=text_encoder,
                               text_encoder_dtype=text_encoder_dtype, offload=offload)
    app = build_app(cascade, model, torch_thread=torch_thread,
                    load_options=dict(device=device, dtype=dtype, text_encoder=text_encoder,
                                      text_encoder_dtype=text_encoder_dtype, offload=offload))
    print(f"pixelcascade serving {model} at http://{host}:{port}", file=sys.stderr, flush=True)
    app.launch(server_name=host, server_port=port, share=share, show_error=True, quiet=True, css=PAGE_CSS)
