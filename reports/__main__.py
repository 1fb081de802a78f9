"""Entry point: ``python -m reports build --study-name NAME [...]``."""

from __future__ import annotations

import sys

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] != "build":
        print("error: expected the command build; usage: python -m reports build --study-name NAME "
              "[--storage URL] [--seeds 3]", file=sys.stderr)
        sys.exit(2)
    from reports.build import main

    sys.exit(main(sys.argv[2:]))
