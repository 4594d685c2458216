"""`python -m cluster.cli`: the `fleet` command."""

import sys

from cluster.cli import main

sys.exit(main())
