"""Entry point: ``python -m study run ...``, ``python -m study show ...`` or ``python -m study dashboard``."""

from __future__ import annotations

import sys

USAGE = "usage: python -m study {run,show,dashboard} [options]   (--help after a command for its options)"


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] not in ("run", "show", "dashboard"):
        if len(sys.argv) >= 2 and sys.argv[1] in ("-h", "--help"):
            print(USAGE)
            return 0
        print(f"error: expected a command, run, show or dashboard; {USAGE}", file=sys.stderr)
        return 2
    if sys.argv[1] == "run":
        from study.run import main as command
    elif sys.argv[1] == "show":
        from study.show import main as command
    else:
        from study.dashboard import main as command
    return command(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
