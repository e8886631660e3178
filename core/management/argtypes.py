"""argparse type= helpers and usage errors shared by the management commands: a bad flag fails with
the flag's own message and exit code EXIT_USAGE."""

import argparse
import datetime as dt
import sys
from decimal import Decimal, InvalidOperation
from functools import partial

from django.core.management.base import CommandError

EXIT_USAGE = 1


def iso_date(value: str) -> dt.date:
    if len(value) != 10:  # fromisoformat also takes 20300210 and week dates
        raise ValueError(value)
    return dt.date.fromisoformat(value)


def finite_decimal(value: str) -> Decimal:
    parsed = Decimal(value)
    if not parsed.is_finite():
        raise ValueError(value)
    return parsed


def flag(message: str, convert, valid=lambda value: True, *, show_raw: bool = False, invalid: str | None = None):
    """An argparse type= that converts, checks, and fails with the flag's own message (`invalid`, when
    given, for a value that converts but fails the check)."""
    def parse(value: str):
        try:
            parsed = convert(value)
        except (ValueError, InvalidOperation):
            raise argparse.ArgumentTypeError(message.format(value=value)) from None
        if not valid(parsed):
            raise argparse.ArgumentTypeError((invalid or message).format(value=value if show_raw else parsed))
        return parsed
    return parse


def usage_error(parser: argparse.ArgumentParser, message: str):
    """Bad flags exit with EXIT_USAGE and the flag's own message, as every other usage error does
    (argparse alone would exit 2, which here means an incomplete run, and prefix the message)."""
    error = sys.exc_info()[1]  # argparse calls error() while handling the ArgumentError
    if isinstance(error, argparse.ArgumentError) and isinstance(error.__context__, argparse.ArgumentTypeError):
        message = error.message
    if parser.called_from_command_line:
        parser.exit(EXIT_USAGE, f"CommandError: {message}\n")
    raise CommandError(message, returncode=EXIT_USAGE)


class UsageErrorsMixin:
    """A command whose bad flags exit with EXIT_USAGE and a message a person can act on (usage_error)."""

    def create_parser(self, prog_name, subcommand, **kwargs):
        parser = super().create_parser(prog_name, subcommand, **kwargs)
        parser.error = partial(usage_error, parser)
        return parser
