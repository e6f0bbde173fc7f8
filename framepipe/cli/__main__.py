"""``python -m framepipe.cli``: the ``framepipe`` command line."""

import sys

from framepipe.cli import main

sys.exit(main())
