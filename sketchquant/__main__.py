"""python -m sketchquant: the command line."""

import sys

from sketchquant.app.cli import main

sys.exit(main())
