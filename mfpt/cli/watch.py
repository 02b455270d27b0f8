"""`mfpt watch RUN_DIR`: a local web page over a run folder, or a folder of runs, that updates itself as they run."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from mfpt.analysis.watch import open_server
from mfpt.core.network import is_loopback


def cmd_watch(args: argparse.Namespace) -> int:
    """Serve the page until Ctrl-C; the first line printed is its address."""
    server = open_server(args.run_dir, args.host, args.port, allow_remote=args.allow_remote, quiet=not args.verbose)
    if not is_loopback(args.host):
        print(f"warning: serving {server.root} to the network on {args.host}: anyone who reaches this port can read "
              "the run's metrics and files (no password, no TLS). An SSH tunnel to 127.0.0.1 is safer (docs/watch.md).",
              file=sys.stderr, flush=True)
    print(f"mfpt watch: {server.root} at {server.url} (Ctrl-C stops it)", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def add_parser(sub: Any, config_args: argparse.ArgumentParser) -> None:
    """The `mfpt watch` subcommand."""
    parser = sub.add_parser(
        "watch", help="a live web page of a run (or a folder of runs) on 127.0.0.1",
        description="Serve a read-only page over RUN_DIR that shows the run as it goes: rounds and time left, "
                    "accuracy and loss per language by round, this round's clients (replied, refused, missing), "
                    "bytes against full fine-tuning, epsilon spent, the selected round. It updates itself every "
                    "2 s; GET /api/state returns the same as JSON. A folder of runs (a sweep) lists them.")
    parser.add_argument("run_dir", help="a run's output_dir, or a folder of runs (a sweep's --out)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=int, default=8765, help="port (0 = any free one; default 8765)")
    parser.add_argument("--allow-remote", action="store_true",
                        help="allow a --host other than loopback (anyone who reaches it can read the run)")
    parser.set_defaults(func=cmd_watch)
