"""``python -m study dashboard``: optuna-dashboard on a study's storage, its URL kept off the command line.

The storage comes from ``--storage``, else ``$CIFAR_STORAGE``, else the SQLite
default, like every other command's; the artifacts from the folder the study
writes them to (``study.storage.artifact_dir_for``). The server binds to
loopback. The URL is printed with its password masked, and never passed to
another process: ``make dashboard`` runs this, not the ``optuna-dashboard``
command line, so a password in ``$CIFAR_STORAGE`` never reaches ``ps``.

Usage:
    CIFAR_STORAGE=postgresql://user:secret@host/db python -m study dashboard [--port 8080]
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

from cifar.cli import ArgParser, UsageError, fail, number
from study.storage import (
    DEFAULT_STORAGE,
    STORAGE_ENV,
    artifact_dir_for,
    default_storage,
    has_password,
    make_storage,
    redact,
)


def browse_command(storage: str, artifact_dir: str) -> str:
    """How to open a study in optuna-dashboard; a URL with a password stays in the environment."""
    if has_password(storage):
        return f"make dashboard   (optuna-dashboard on the storage in ${STORAGE_ENV}, which holds its password)"
    return f"optuna-dashboard {storage} --artifact-dir {artifact_dir}   (or make dashboard)"


def main(argv: Sequence[str] | None = None) -> int:
    p = ArgParser(prog="python -m study dashboard", description="optuna-dashboard on a study's storage.")
    p.add_argument("--storage", default=None,
                   help=f"any SQLAlchemy URL; default: ${STORAGE_ENV}, else {DEFAULT_STORAGE}")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=number(int, 1, 65535), default=8080)
    p.add_argument("--artifact-dir", default=None, help="default: where the study writes its artifacts")
    try:
        args = p.parse_args(argv)
        url = args.storage or default_storage()
        storage = make_storage(url, heartbeat_interval=None, grace_period=None, create=False)
    except UsageError as e:
        return fail(e)
    import optuna_dashboard
    from optuna.artifacts import FileSystemArtifactStore

    folder = Path(args.artifact_dir) if args.artifact_dir else artifact_dir_for(url)
    folder.mkdir(parents=True, exist_ok=True)
    print(f"optuna-dashboard on {redact(url)} at http://{args.host}:{args.port}/ (artifacts: {folder})", flush=True)
    optuna_dashboard.run_server(storage, host=args.host, port=args.port,
                                artifact_store=FileSystemArtifactStore(str(folder)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
