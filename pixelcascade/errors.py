"""The one base class of every error a user can fix (a bad file, flag, folder or setting).

Its message names the problem and the fix in one line. The command line prints it as ``error: ...`` with exit
status 2 and no stack trace (``cli.main`` catches this class alone); the Python API raises it as it is, so
``except pixelcascade.PixelcascadeError`` catches every such error. Anything else escaping is a bug.
"""

from __future__ import annotations


class PixelcascadeError(Exception):
    """A problem in the user's input, files or settings, described with its fix."""
