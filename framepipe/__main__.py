"""``python -m framepipe``: the ``framepipe`` command line."""

import sys

from framepipe.cli import main

sys.exit(main())
