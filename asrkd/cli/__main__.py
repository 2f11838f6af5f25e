"""``python -m asrkd.cli`` (what ``torchrun -m asrkd.cli train ...`` runs)."""

import sys

from asrkd.cli import main

sys.exit(main())
