"""``python -m aledit.bench generate|run|report ...`` (the same commands as ``aledit bench``)."""

import sys

from .cli import main

sys.exit(main())
