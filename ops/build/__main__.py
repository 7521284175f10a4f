"""``python -m ops.build [--cuda]``: see :mod:`ops.build`."""

import sys

from . import main

sys.exit(main())
