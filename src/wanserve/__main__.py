"""`python -m wanserve ...`: the CLI where no console script is installed (a GPU machine that runs the
suite from a copied tree with PYTHONPATH=src)."""

import sys

from .cli import main

sys.exit(main())
