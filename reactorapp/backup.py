"""``python -m reactorapp.backup``: save a running hub's database, restore one.

::

    python -m reactorapp.backup save http://127.0.0.1:8080 backup.sqlite3
    python -m reactorapp.backup restore backup.sqlite3 /var/lib/reactorapp

``save`` asks the hub for ``POST /api/v1/backup`` (with a bearer token from
``--token`` or ``$REACTORAPP_TOKEN``, or a user from ``--user`` and the
password from ``$REACTORAPP_PASSWORD`` or a prompt). ``restore`` runs with
the hub stopped.
"""

from __future__ import annotations

import argparse
import base64
import getpass
import os
import shutil
import sys
import urllib.error
import urllib.request

from reactorapp.store.backup import check_backup, restore
from reactorapp.store.interfaces import StoreError


def save(url: str, path: str, headers: dict[str, str], timeout: float = 600.0) -> int:
    """Download a backup from the hub at ``url`` into ``path``; its size."""
    request = urllib.request.Request(url.rstrip("/") + "/api/v1/backup", data=b"",
                                     method="POST", headers=headers)
    scratch = path + ".part"
    with urllib.request.urlopen(request, timeout=timeout) as response, \
            open(scratch, "wb") as f:
        shutil.copyfileobj(response, f)
        f.flush()
        os.fsync(f.fileno())
    check_backup(scratch)
    os.replace(scratch, path)
    return os.path.getsize(path)


def _headers(args) -> dict[str, str]:
    token = args.token or os.environ.get("REACTORAPP_TOKEN")
    if token:
        return {"Authorization": f"Bearer {token}"}
    if args.user:
        password = os.environ.get("REACTORAPP_PASSWORD")
        if password is None:
            password = getpass.getpass(f"Password for {args.user}: ")
        pair = base64.b64encode(f"{args.user}:{password}".encode()).decode("ascii")
        return {"Authorization": f"Basic {pair}"}
    return {}


def make_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m reactorapp.backup``."""
    parser = argparse.ArgumentParser(
        prog="python -m reactorapp.backup",
        description="Save the database of a running hub, or put a saved one in place.")
    commands = parser.add_subparsers(dest="command", required=True)
    saving = commands.add_parser("save", help="download a backup from a running hub")
    saving.add_argument("url", metavar="URL", help="the hub's HTTP address, http://host:port")
    saving.add_argument("file", metavar="FILE", help="where to write the backup")
    saving.add_argument("--token", help="a bearer token (or $REACTORAPP_TOKEN)")
    saving.add_argument("--user", help="a user of the password file"
                        " (the password from $REACTORAPP_PASSWORD or a prompt)")
    restoring = commands.add_parser("restore", help="make a backup the database of a"
                                    " stopped hub's data directory")
    restoring.add_argument("file", metavar="FILE", help="the backup")
    restoring.add_argument("directory", metavar="DIR", help="the hub's data directory (--data)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = make_parser().parse_args(argv)
    try:
        if args.command == "save":
            size = save(args.url, args.file, _headers(args))
            print(f"saved {size} bytes to {args.file}")
        else:
            kept = restore(args.file, args.directory)
            print(f"restored {args.file} into {args.directory}"
                  + (f"; the database it replaced is {kept}" if kept else ""))
    except StoreError as e:
        print(f"reactorapp.backup: {e}", file=sys.stderr)
        return 1
    except urllib.error.HTTPError as e:
        print(f"reactorapp.backup: the hub answered {e.code}: {e.read().decode(errors='replace')}",
              file=sys.stderr, end="")
        return 1
    except (urllib.error.URLError, OSError) as e:
        print(f"reactorapp.backup: {getattr(e, 'reason', None) or e}.", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
