"""Keeping secrets out of what vigil prints: configuration errors, URLs, log lines.

:func:`redact` blanks the password of any ``scheme://user:password@host`` URL and every
known secret value; :func:`install_log_redaction` applies it to every log record of the
process (messages and tracebacks), once the settings have named the secrets.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable

__all__ = ["describe_validation_error", "install_log_redaction", "redact", "redact_url"]

_URL_PASSWORD = re.compile(r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)[^@\s/]+@")
_QUERY_PASSWORD = re.compile(r"(?P<head>[?&]password=)[^&\s]+")
_SECRETS: set[str] = set()


def redact_url(url: str) -> str:
    """``url`` with its password replaced by ``***`` (also a libpq ``password=`` parameter).

    >>> redact_url("tcp://default:s3cret@db:9000/vigil")
    'tcp://default:***@db:9000/vigil'
    >>> redact_url("postgresql://vigil@db/vigil?password=s3cret&schema=h")
    'postgresql://vigil@db/vigil?password=***&schema=h'
    """
    return _QUERY_PASSWORD.sub(r"\g<head>***", _URL_PASSWORD.sub(r"\g<head>***@", url))


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """``text`` without URL passwords and without any of ``secrets`` (or the known ones).

    >>> redact("token 123:ABCDEF at http://u:pw@h/", ["123:ABCDEF"])
    'token *** at http://u:***@h/'
    """
    text = redact_url(text)
    for secret in sorted({*secrets, *_SECRETS}, key=len, reverse=True):
        if len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def describe_validation_error(exc: Exception) -> str:
    """A pydantic ``ValidationError`` as lines of ``field: message``, without the input
    values pydantic would print (they may hold a token or a password)."""
    lines = []
    for error in exc.errors(include_input=False, include_url=False, include_context=False):
        where = ".".join(str(part) for part in error["loc"]) or "settings"
        lines.append(f"  {where}: {redact(error['msg'])}")
    return "\n".join(lines)


class _RedactingRecord(logging.LogRecord):
    def getMessage(self) -> str:  # noqa: N802 - logging's name
        message = redact(super().getMessage())
        if self.exc_info and not self.exc_text:
            self.exc_text = redact(logging.Formatter().formatException(self.exc_info))
        return message


def install_log_redaction(secrets: Iterable[str]) -> None:
    """Remember ``secrets`` and redact them (and URL passwords) from every log record."""
    _SECRETS.update(s for s in secrets if s)
    logging.setLogRecordFactory(_RedactingRecord)
