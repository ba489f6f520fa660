"""pixelcascade: cascaded pixel-space text-to-image diffusion (the DeepFloyd IF design).

Importing the package loads no weights, reads no files and touches no network.
"""

from .errors import PixelcascadeError  # noqa: E402,F401  (the base of every error a user can fix)
from .version import __version__  # noqa: F401


def load(model="shapes", **kwargs):
    """A cascade ready to generate (:func:`pixelcascade.api.load`): ``pixelcascade.load().generate("a red
    circle")`` returns PIL images. ``model``: a shipped model's name, our .safetensors files, IF folders."""
    from .api import load as _load
    return _load(model, **kwargs)


def __getattr__(name):  # the public classes, imported on first use (importing the package stays light)
    if name in ("Cascade", "CascadeOutput"):
        from . import api
        return getattr(api, name)
    raise AttributeError(f"module 'pixelcascade' has no attribute {name!r}")
