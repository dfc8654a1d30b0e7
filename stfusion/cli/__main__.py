"""``python -m stfusion.cli``: the command line the Snakemake rules run."""

import sys

from stfusion.cli.app import main

sys.exit(main())
