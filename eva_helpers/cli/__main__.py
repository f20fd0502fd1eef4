"""`python -m eva_helpers.cli ...`, the same as `eva ...`."""
import sys

from eva_helpers.cli import main

sys.exit(main())
