"""``python -m inferforge.cli``: the same as the ``inferforge`` console script."""

import sys

from inferforge.cli.dispatch import main

sys.exit(main())
