"""Small pieces the repositories share to build SQL text: numbered parameters in order, and LIKE
patterns that take the user's text literally. Values are always bound, never spliced in."""

from __future__ import annotations

__all__ = ["Statement", "like_escape"]


class Statement:
    """SQL text with numbered parameters, built up in order."""

    def __init__(self) -> None:
        self.params: list[object] = []

    def param(self, value: object) -> str:
        """Bind `value`; returns its placeholder ($n)."""
        self.params.append(value)
        return f"${len(self.params)}"


def like_escape(text: str) -> str:
    """`text` for a LIKE pattern with its own % _ \\ taken literally (the default escape)."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
