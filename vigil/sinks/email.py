"""The email channel: one multipart message per notification, sent with aiosmtplib.

The message has a plain-text part and an HTML part with the chart inlined as a PNG
(``multipart/alternative`` → ``multipart/related``, referenced by ``cid:``), so mail clients
that hide attachments still show the picture. A resolve message is a reply
(``In-Reply-To``/``References``) to the alert it resolves, so clients thread them.
"""

from __future__ import annotations

import email.utils
from email.message import EmailMessage

import aiosmtplib

from vigil.sinks.alerts import EmailReceiver, Notification, SmtpSettings

__all__ = [
    "EmailChannel",
    "MessageBuildError",
    "build_email",
    "is_permanent_smtp_error",
    "is_transient_smtp_error",
]


class MessageBuildError(ValueError):
    """A message that cannot be built from its notification: permanent (another attempt
    builds the same message), so it is dead-lettered at once rather than retried."""


def build_email(
    notification: Notification,
    sender: str,
    to: list[str],
    chart_png: bytes | None,
    previous: dict | None = None,
    dashboard_url: str | None = None,
) -> EmailMessage:
    """The email for ``notification``; ``previous`` is what :meth:`EmailChannel.send`
    returned for the alert being followed up (its Message-ID and subject)."""
    message = EmailMessage()
    subject = notification.subject()
    if previous and previous.get("subject"):
        subject = "Re: " + previous["subject"].removeprefix("Re: ")
    # A label value may hold a newline: a header never does (no header injection).
    message["Subject"] = " ".join(subject.split())
    message["From"] = sender
    message["To"] = ", ".join(to)
    message["Date"] = email.utils.formatdate(usegmt=True)
    domain = sender.rpartition("@")[2] or "vigil.local"
    message["Message-ID"] = email.utils.make_msgid("vigil", domain=domain)
    if previous and previous.get("message_id"):
        message["In-Reply-To"] = previous["message_id"]
        message["References"] = previous["message_id"]
    message["X-Vigil-Notification"] = notification.id
    message.set_content(notification.text(dashboard_url))
    cid = email.utils.make_msgid("chart", domain=domain) if chart_png else None
    message.add_alternative(
        notification.html(cid[1:-1] if cid else None, dashboard_url), subtype="html"
    )
    if chart_png and cid:
        html_part = message.get_payload()[1]
        html_part.add_related(chart_png, "image", "png", cid=cid, filename="chart.png")
    return message


def is_permanent_smtp_error(exc: BaseException) -> bool:
    """Rejections that another attempt cannot fix: a message that cannot be built, a 5xx
    answer (a refused recipient or sender, a failed login). A 4xx answer is temporary.

    >>> refused = lambda code: aiosmtplib.SMTPRecipientsRefused(
    ...     [aiosmtplib.SMTPRecipientRefused(code, "no", "a@b")])
    >>> is_permanent_smtp_error(refused(550)), is_permanent_smtp_error(refused(450))
    (True, False)
    """
    if isinstance(exc, MessageBuildError):
        return True
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        return not exc.recipients or any(r.code >= 500 for r in exc.recipients)
    code = getattr(exc, "code", None)
    if isinstance(code, int) and 400 <= code < 500:
        return False
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError | aiosmtplib.SMTPSenderRefused):
        return True
    return isinstance(code, int) and 500 <= code < 600


def is_transient_smtp_error(exc: BaseException) -> bool:
    """Failures that waiting may cure: the server unreachable, disconnecting or timing out
    (all ``OSError``), or a 4xx answer (greylisting, a full queue, a mailbox busy).

    >>> is_transient_smtp_error(aiosmtplib.SMTPConnectError("refused"))
    True
    >>> is_transient_smtp_error(aiosmtplib.SMTPResponseException(451, "try later"))
    True
    >>> is_transient_smtp_error(aiosmtplib.SMTPResponseException(554, "no"))
    False
    """
    if is_permanent_smtp_error(exc):
        return False
    if isinstance(exc, OSError | aiosmtplib.SMTPRecipientsRefused):
        return True
    code = getattr(exc, "code", None)
    return isinstance(exc, aiosmtplib.SMTPResponseException) and isinstance(code, int) and (
        400 <= code < 500)


class EmailChannel:
    """Delivers notifications to the addresses of one receiver over SMTP."""

    name = "email"

    def __init__(
        self, smtp: SmtpSettings, receiver: EmailReceiver, dashboard_url: str | None = None
    ) -> None:
        self.smtp = smtp
        self.receiver = receiver
        self.dashboard_url = dashboard_url

    async def send(
        self,
        notification: Notification,
        chart_png: bytes | None,
        previous: dict | None,
        progress: dict | None = None,
    ) -> dict:
        """Send one email; returns what a follow-up needs (Message-ID, subject)."""
        try:
            message = build_email(
                notification, self.smtp.sender, self.receiver.to, chart_png, previous,
                self.dashboard_url,
            )
        except (ValueError, TypeError, LookupError) as exc:
            raise MessageBuildError(f"the email cannot be built: {exc}") from exc
        password = self.smtp.password.get_secret_value() if self.smtp.password else None
        await aiosmtplib.send(
            message,
            hostname=self.smtp.host,
            port=self.smtp.port,
            username=self.smtp.username,
            password=password,
            use_tls=self.smtp.security == "ssl",
            start_tls=True if self.smtp.security == "starttls" else False,
            validate_certs=self.smtp.validate_certs,
            timeout=self.smtp.timeout_s,
        )
        first = previous or {}
        return {
            "message_id": first.get("message_id") or message["Message-ID"],
            "subject": first.get("subject") or message["Subject"],
        }
