"""``python -m cvsuite ...``: the same as the ``cvsuite`` command."""

import sys

from cvsuite.commands import main

sys.exit(main())
