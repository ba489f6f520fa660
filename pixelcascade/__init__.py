"""pixelcascade: cascaded pixel-space text-to-image diffusion (the DeepFloyd IF design).

Importing the package loads no weights, reads no files and touches no network.
"""

__version__ = "0.1.0"
