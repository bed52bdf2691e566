"""``python -m matscale`` (what ``torchrun -m matscale train ...`` runs)."""

import sys

from matscale.cli import main

sys.exit(main())
