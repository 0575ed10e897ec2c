"""Time as vigil reads and writes it: epoch milliseconds inside, ISO 8601 (UTC) outside.

One place for the conversions every room needs — ISO text to epoch ms and back, durations
(``90s``, ``1h30m``) and points in time given as an age (``30d`` ago) — so that the parsers,
the stores, the alerts and the CLI read ``2024-05-01T12:00:00Z`` the same way.
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timedelta, timezone

__all__ = ["iso", "iso_to_ms", "now_ms", "parse_duration", "parse_time"]

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_ONE_MS = timedelta(milliseconds=1)
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}


def now_ms() -> int:
    """The wall clock in epoch milliseconds."""
    return time.time_ns() // 1_000_000


def iso(ts_ms: int, keep_ms: bool = False) -> str:
    """``2024-03-04T12:00:00Z``; with ``keep_ms``, milliseconds are shown when not zero.

    >>> iso(1709553600000), iso(1709553600250), iso(1709553600250, keep_ms=True)
    ('2024-03-04T12:00:00Z', '2024-03-04T12:00:00Z', '2024-03-04T12:00:00.250Z')
    """
    moment = datetime.fromtimestamp(ts_ms / 1000, timezone.utc)
    if keep_ms and ts_ms % 1000:
        return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def iso_to_ms(text: str) -> int:
    """ISO 8601 / RFC 3339 → epoch ms; naive times are UTC. Raises ValueError.

    >>> iso_to_ms("2024-05-01T12:00:00Z"), iso_to_ms("2024-05-01 14:00:00.5+02:00")
    (1714564800000, 1714564800500)
    >>> iso_to_ms("2024-05-01")
    1714521600000
    """
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        # Python 3.10's fromisoformat knows neither "Z" nor 9-digit fractions; 3.11+ never
        # gets here for valid input, so the rewrite costs nothing on the common path.
        parsed = datetime.fromisoformat(_normalise_iso(text))
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    # Integer arithmetic on timedeltas: exact, unlike float(timestamp()) * 1000.
    return (parsed - _EPOCH) // _ONE_MS


def _normalise_iso(text: str) -> str:
    """Rewrite the ISO forms older Pythons reject: a ``Z`` suffix, ``+HHMM``, >6 fraction digits.

    >>> _normalise_iso("2024-05-01T12:00:00.123456789Z")
    '2024-05-01T12:00:00.123456+00:00'
    """
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    elif len(text) > 5 and text[-5] in "+-" and text[-4:].isdigit():
        text = f"{text[:-2]}:{text[-2:]}"
    dot = text.find(".", 19)
    if dot >= 0:
        end = dot + 1
        while end < len(text) and text[end].isdigit():
            end += 1
        text = text[: dot + 1] + text[dot + 1 : end][:6].ljust(6, "0") + text[end:]
    return text


def parse_duration(text: str) -> float:
    """Seconds in ``90s``, ``30m``, ``1h``, ``2d``, ``1w``, ``1h30m``.

    >>> parse_duration("1h30m"), parse_duration("45s"), parse_duration("2d")
    (5400.0, 45.0, 172800.0)
    """
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([smhdw])", text.strip().lower())
    if not parts or "".join(n + u for n, u in parts) != re.sub(r"\s+", "", text.lower()):
        raise ValueError(f"not a duration: {text!r} (examples: 90s, 30m, 1h, 2d)")
    return float(sum(float(n) * _UNIT_S[u] for n, u in parts))


def parse_time(text: str, now: int | None = None) -> int:
    """Epoch ms from an age (``30d``, ``12h``, ``1h30m`` ago), ISO 8601 (UTC when no zone
    is given) or epoch milliseconds.

    >>> parse_time("2d", now=3 * 86_400_000)
    86400000
    >>> parse_time("2024-01-01T00:00:00Z"), parse_time("2024-01-01"), parse_time("1704067200000")
    (1704067200000, 1704067200000, 1704067200000)
    """
    text = text.strip()
    if text.isdigit():
        return int(text)
    try:
        age_s = parse_duration(text)
    except ValueError:
        pass
    else:
        return (now_ms() if now is None else now) - int(age_s * 1000)
    try:
        return iso_to_ms(text)
    except ValueError:
        raise ValueError(f"not a time: {text!r} (use ISO 8601 or an age like 30d)") from None
