"""API errors in words a supervisor understands. The API's own message stays available (it says
precisely which field is wrong); these say what happened and what to do."""

from __future__ import annotations

__all__ = ["in_words"]

_BY_CODE = {
    "not_found": "It does not exist, or it is outside the calls your account may see.",
    "forbidden": "Your account's role does not allow this. Ask an administrator if you need it.",
    "erased": "This recording was erased: its audio and the details of who was on the call "
              "are gone for good.",
    "no_audio": "This recording has no audio (the call was refused or no media arrived).",
    "recording_active": "The call is still being recorded. You can erase it once it has ended.",
    "legal_hold": "A legal hold keeps this recording, so it cannot be erased until the hold is "
                  "released.",
    "database_unavailable": "The recordings database cannot be reached right now. Nothing was "
                            "changed. Try again in a minute.",
    "key_unavailable": "The recording's encryption key cannot be opened on this server right "
                       "now (the key store may be sealed). Ask a key custodian.",
    "unavailable": "This part of the server is not running right now. Try again later or ask "
                   "an administrator.",
    "recording_unreadable": "The recording file is damaged or missing. Report this to an "
                            "administrator: the signature check will show what is wrong.",
    "session_expired": "Your session has ended (you logged out, or there was no activity for "
                       "a while). Log in again.",
    "csrf_failed": "This change did not come from a page of this server. Reload the page and "
                   "try again.",
    "second_user_required": "A second person has to confirm this: the same user cannot ask "
                            "and approve.",
    "username_taken": "That user name is already taken.",
    "payload_too_large": "That is more text than the server accepts.",
    "busy": "The server is busy. Try again in a moment.",
    "too_many_attempts": "Too many failed log-ins from this computer. Wait a few minutes.",
    "internal_error": "Something went wrong on the server. Nothing you did caused it; it was "
                      "logged. Try again, or tell an administrator.",
}


def in_words(code: str | None, status: int, message: str = "") -> str:
    """One or two sentences for a person; the API's message when it is the precise one (a bad
    field) or nothing better is known."""
    if code in _BY_CODE:
        text = _BY_CODE[code]
        if code in ("legal_hold",) and message:
            return f"{text} ({message})"
        return text
    if status == 400 and message:
        return f"The server could not use what was entered: {message}."
    if status == 409 and message:
        return f"This cannot be done now: {message}."
    if status >= 500:
        return _BY_CODE["internal_error"]
    return message or "The request could not be completed."
