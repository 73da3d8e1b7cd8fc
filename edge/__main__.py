"""`python -m edge` is `scanside`."""

import sys

from edge.cli import main

sys.exit(main())
