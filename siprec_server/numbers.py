"""Phone numbers as people type them and SBCs send them, reduced to one comparable form.

`+44 20 7946 0000`, `00442079460000`, `tel:+44-20-7946-0000` and `sip:+442079460000@host;user=phone`
all become `+442079460000`; a national or extension number keeps its digits (`2001`, `02079460000`).
Used for search ("every recording of this person") and for user scopes.
"""

from __future__ import annotations

import re
from urllib.parse import unquote

_VISUAL = re.compile(r"[\s\-.()/]")
_NUMBER = re.compile(r"\+?[0-9]{2,20}")
_INTERNATIONAL_PREFIX = "00"


def normalize_number(text: str) -> str | None:
    """The number in `text` (a number, a tel: URI or a sip: URI whose user part is a number),
    or None when it holds none."""
    value = unquote(text.strip())
    lowered = value.lower()
    if lowered.startswith(("sip:", "sips:")):
        user, at, _host = value.split(":", 1)[1].partition("@")
        if not at:
            return None
        value = user.split(";", 1)[0]
    elif lowered.startswith("tel:"):
        value = value[4:].split(";", 1)[0]
    value = _VISUAL.sub("", value)
    if not _NUMBER.fullmatch(value):
        return None
    if value.startswith(_INTERNATIONAL_PREFIX) and len(value) > 4:
        return "+" + value[len(_INTERNATIONAL_PREFIX):]
    return value
