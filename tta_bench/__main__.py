"""`python -m tta_bench`: runs the CLI (tta_bench.cli). Nothing imports this module."""

from __future__ import annotations

import sys

from tta_bench.cli import main

if __name__ == "__main__":
    sys.exit(main())
