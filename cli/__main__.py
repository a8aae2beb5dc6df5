"""``python -m cli``: the ``imagine`` command."""

import sys

from cli import main

sys.exit(main())
