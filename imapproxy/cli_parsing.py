"""argparse as the CLI uses it: defaults in every option's help, one line per subcommand,
usage errors from the subcommand they concern, the version from the package metadata."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from importlib import metadata
from typing import Any

from . import __version__


def package_version() -> str:
    """The installed distribution's version (``pyproject.toml``), else the source tree's."""
    try:
        return metadata.version("imapproxy")
    except metadata.PackageNotFoundError:
        return __version__


class HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless it says it itself or has none."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if (
            "%(default" in text
            or "default:" in text
            or not action.option_strings
            or action.default in (None, False, [], argparse.SUPPRESS)
        ):
            return text
        return f"{text} (default: %(default)s)"


def subparser(
    sub: Any,
    name: str,
    *,
    help: str,
    common: argparse.ArgumentParser,
    description: str | None = None,
) -> argparse.ArgumentParser:
    """A subcommand: ``help`` is its one line in ``imapproxy --help``."""
    parser: argparse.ArgumentParser = sub.add_parser(
        name,
        help=help,
        description=description or help,
        parents=[common],
        formatter_class=HelpFormatter,
    )
    parser.set_defaults(subparser=parser)
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Like ``parser.parse_args``, but an unknown argument is reported with the usage of
    the subcommand it was given to, not the top level's."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        target: argparse.ArgumentParser = getattr(args, "subparser", parser)
        target.error(f"unrecognized arguments: {' '.join(extra)}")
    return args
