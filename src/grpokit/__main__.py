"""`python -m grpokit ...` (also what `accelerate launch -m grpokit train ...` runs)."""

import sys

from grpokit.cli import main

sys.exit(main())
