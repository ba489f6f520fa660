"""``python -m pixelcascade.cli`` (torchrun -m pixelcascade.cli ...): the command line."""

import sys

from . import main

sys.exit(main())
