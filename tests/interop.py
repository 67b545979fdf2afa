"""Where the vendor interop corpus is: ../shared/interop beside the repository (as CI lays it
out), or $SIPREC_INTEROP_DIR. Missing corpus is an error, not a skip: tests that silently stop
checking vendor dialects would hide regressions."""

from __future__ import annotations

import os
from pathlib import Path

_REPO = Path(__file__).resolve().parents[1]


def _find() -> Path:
    for candidate in (os.environ.get("SIPREC_INTEROP_DIR"), _REPO.parent / "shared" / "interop"):
        if candidate and any(Path(candidate).glob("*.sip")):
            return Path(candidate)
    raise RuntimeError(
        f"interop corpus not found: expected {_REPO.parent / 'shared' / 'interop'} "
        "or $SIPREC_INTEROP_DIR"
    )


INTEROP_DIR = _find()
