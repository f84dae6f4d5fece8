"""The console's errors, under the one root (common.errors.ExfilGuardError).

ConsoleError        root of what the console and its books raise (a LocatedError)
  InvalidAccount    a name, role or password outside the limits: `field`, `reason`
  NoSuchAccount     no account has this name: `name`
  LoginRefused      a link or password was not accepted (the reason is kept from the page)
  InvalidCase       a case input outside its limits: `field`, `reason`
  NoSuchCase        no case has this id: `case_id`
"""

from __future__ import annotations

from common.errors import LocatedError


class ConsoleError(LocatedError):
    """Any console failure: `location` (the store, or a page), `reason`."""


class InvalidAccount(ConsoleError):
    """An account input outside its limits."""

    def __init__(self, location: str, field: str, reason: str) -> None:
        self.field = field
        super().__init__(location, f"{field}: {reason}")
        self.reason = reason


class NoSuchAccount(ConsoleError):
    """No account has this name."""

    def __init__(self, location: str, name: str) -> None:
        self.name = name
        super().__init__(location, f"no such console user: {name}")


class LoginRefused(ConsoleError):
    """A login link or password was refused (unknown, used, expired, wrong, disabled account)."""


class InvalidCase(ConsoleError):
    """A case input outside its limits."""

    def __init__(self, location: str, field: str, reason: str) -> None:
        self.field = field
        super().__init__(location, f"{field}: {reason}")
        self.reason = reason


class NoSuchCase(ConsoleError):
    """No case has this id."""

    def __init__(self, location: str, case_id: str) -> None:
        self.case_id = case_id
        super().__init__(location, f"no such case: {case_id}")


class BadParameter(ConsoleError):
    """A query or form value a page cannot use."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        super().__init__("page", f"{field}: {reason}")
        self.reason = reason
