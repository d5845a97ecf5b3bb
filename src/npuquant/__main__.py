"""``python -m npuquant`` is the ``npuquant`` command."""

import sys

from .cli import main

sys.exit(main())
