"""Error tree, named by what the catcher should do about it.

    NotifierError
    ├── ConfigError        refuse to start; names the key and the problem
    ├── AuthError          credentials rejected: pause that connection, tell admins once
    ├── RetriableError     transient (429, 5xx, timeout, dropped connection): back off and retry
    ├── FatalRequestError  the request itself is wrong (4xx): record and alert, do not retry
    ├── BadRecordError     one row cannot be mapped: skip it, quarantine it, audit it
    ├── CommandError       a chat command is malformed or not allowed: answer the user
    ├── SendError          a Bot Connector call failed: the delivery worker classifies it by status and code
    └── CardTooLarge       a card exceeds Teams' size limit even fully trimmed: change the payload, never
                           retry (also a ValueError, as it was before it joined this tree)
"""

from __future__ import annotations


class NotifierError(Exception):
    """Base of every error this project raises on purpose."""


class ConfigError(NotifierError):
    def __init__(self, key: str, problem: str) -> None:
        super().__init__(f"config error: {key}: {problem}")
        self.key = key
        self.problem = problem


class AuthError(NotifierError):
    """Credentials were refused (after one fresh attempt), or there is no IAM to ask (status 404)."""

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class RetriableError(NotifierError):
    def __init__(self, message: str, *, status: int | None = None, retry_after: float | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.retry_after = retry_after
        self.code = code


class FatalRequestError(NotifierError):
    def __init__(self, message: str, *, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


class BadRecordError(NotifierError):
    def __init__(self, key: str | None, field: str, problem: str) -> None:
        super().__init__(f"record {key or '<no key>'}: field {field}: {problem}")
        self.key = key
        self.field = field
        self.problem = problem


class CommandError(NotifierError):
    def __init__(self, message: str, *, usage: str | None = None) -> None:
        super().__init__(message)
        self.usage = usage


class CardTooLarge(NotifierError, ValueError):
    """Even the most trimmed form of a card exceeds the budget; the payload must change, not be retried."""

    def __init__(self, size: int, budget: int) -> None:
        super().__init__(f"card is {size} bytes (UTF-16) even when fully trimmed; budget is {budget}")
        self.size = size
        self.budget = budget


class SendError(NotifierError):
    """A Bot Connector call failed; status/code as Teams answered (status None: no answer)."""

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.retry_after = retry_after
