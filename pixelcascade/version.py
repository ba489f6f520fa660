"""The package's version, importable from any layer (the settings record beside every image carries it)."""

__version__ = "0.1.0"
