"""The console's errors, under the one root (common.errors.ExfilGuardError).

ConsoleError        root of what the console and its books raise (a LocatedError)
  InvalidInput      an input outside its limits: `field`, `reason`
    InvalidAccount  a name, role or password
    InvalidCase     a case input
    BadParameter    a query or form value of a page
  NotFound          no record of its kind has this `key`
    NoSuchAccount   no account has this name
    NoSuchCase      no case has this id
  LoginRefused      a link or password was not accepted (the reason is kept from the page)
"""

from __future__ import annotations

from common.errors import LocatedError


class ConsoleError(LocatedError):
    """Any console failure: `location` (the store, or a page), `reason`."""


class InvalidInput(ConsoleError):
    """An input (`field`) outside its limits; `reason` says how (the message names both)."""

    def __init__(self, location: str, field: str, reason: str) -> None:
        self.field = field
        super().__init__(location, f"{field}: {reason}")
        self.reason = reason


class InvalidAccount(InvalidInput):
    """An account input outside its limits."""


class NotFound(ConsoleError):
    """No record of its kind (`what`) has this `key`."""

    what = "record"

    def __init__(self, location: str, key: str) -> None:
        self.key = key
        super().__init__(location, f"no such {self.what}: {key}")


class NoSuchAccount(NotFound):
    """No account has this name (`key`)."""

    what = "console user"


class LoginRefused(ConsoleError):
    """A login link or password was refused (unknown, used, expired, wrong, disabled account)."""


class InvalidCase(InvalidInput):
    """A case input outside its limits."""


class NoSuchCase(NotFound):
    """No case has this id (`key`)."""

    what = "case"


class BadParameter(InvalidInput):
    """A query or form value a page cannot use."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__("page", field, reason)
