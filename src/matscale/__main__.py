"""``python -m matscale`` (what ``torchrun -m matscale train ...`` runs)."""

import sys

from matscale.console import main

sys.exit(main())
