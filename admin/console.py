"""`exfilguard console link --user NAME`: print a one-time login URL for the web console.

The link is valid for 10 minutes and works once: it opens a session for NAME (an account made
with `exfilguard users add`) in the browser that opens it. The URL's address is the config's
`console.url`, else `console.listen`. See docs/console.md.

Exit codes: 0 printed; 1 the store cannot be written; 2 usage or config error (no console
configured, no such user).
"""

from __future__ import annotations

import argparse
from typing import Any

from admin import terminal
from admin.configured import EXIT_USAGE, load_configured, with_store
from admin.terminal import print_json, store_options
from collector.console import errors
from collector.console.logins import LINK_SECONDS, LoginBook
from collector.store import Store


def register(subparsers: Any) -> None:
    """Add `console link`."""
    parser = terminal.command(subparsers, "console", "the web console: one-time login links", __doc__)
    sub = parser.add_subparsers(dest="console_command", metavar="[link]", required=True)
    link = sub.add_parser("link", help=f"print a one-time login URL valid for {LINK_SECONDS // 60} minutes")
    link.add_argument("--user", required=True, metavar="NAME", help="the console account to log in as")
    store_options(link, default=None)
    link.set_defaults(run=run_link)


def run_link(args: argparse.Namespace) -> int:
    """Issue a link and print its URL."""
    config = load_configured("console link", args.config)
    if config.console is None:
        return terminal.fail(
            "console link", "no console is configured (collector.yaml `console:`)", EXIT_USAGE
        )
    base = config.console.base_url()

    def work(store: Store) -> int:
        token, expires = LoginBook(store.domain()).issue_link(args.user)
        url = f"{base}/link/{token}"
        if args.json:
            print_json({"url": url, "user": args.user, "expires": expires})
        else:
            print(url)
        return 0

    try:
        return with_store("console link", args.config, work, readonly=False)
    except errors.ConsoleError as exc:
        return terminal.fail("console link", exc.reason, EXIT_USAGE)
