"""pixelcascade: cascaded pixel-space text-to-image diffusion (the DeepFloyd IF design).

Importing the package loads no weights, reads no files and touches no network.
"""

__version__ = "0.1.0"

from .errors import PixelcascadeError  # noqa: E402,F401  (the base of every error a user can fix)


def load(model="shapes", **kwargs):
    """A cascade ready to generate (:func:`pixelcascade.api.load`): ``pixelcascade.load().generate("a red
    circle")`` returns PIL images. ``model``: a shipped model's name, our .safetensors files, IF folders."""
    from .api import load as _load
    return _load(model, **kwargs)
