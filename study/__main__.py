"""Entry point: ``python -m study run ...`` or ``python -m study show ...``."""

from __future__ import annotations

import sys

USAGE = "usage: python -m study {run,show} [options]   (--help after a command for its options)"


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("run", "show"):
        if len(sys.argv) >= 2 and sys.argv[1] in ("-h", "--help"):
            print(USAGE)
            return 0
        print(f"error: expected a command, run or show; {USAGE}", file=sys.stderr)
        return 2
    if sys.argv[1] == "run":
        from study.run import main as command
    else:
        from study.show import main as command
    return command(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
