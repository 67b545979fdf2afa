"""A rotation must not strand writes waiting in the write-behind journal: their journal's data key
is re-wrapped under the new master key in place, and the old key is no longer needed to read it."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from storage.journal import JournalWriter, journal_files, read_journal, rewrap_journals
from storage.keys import KeyRing, MasterKey, UnknownMasterKey


def test_waiting_journal_survives_the_destruction_of_its_master_key(tmp_path: Path) -> None:
    now = datetime.now(UTC)
    old, new = MasterKey.generate(now), MasterKey.generate(now)
    before = KeyRing(old, {old.key_id: old})
    writer = JournalWriter(tmp_path, lambda: before)
    writer.append({"op": "record_audit", "args": [1]})
    writer.append({"op": "record_audit", "args": [2]})
    writer.close()
    (path,) = journal_files(tmp_path)

    during = KeyRing(new, {old.key_id: old, new.key_id: new})
    assert rewrap_journals(tmp_path, during, old.key_id) == 1
    assert rewrap_journals(tmp_path, during, old.key_id) == 0  # done once

    after = KeyRing(new, {new.key_id: new})  # the old version destroyed
    assert [r["args"] for r in read_journal(path, after)] == [[1], [2]]
    with pytest.raises(UnknownMasterKey):
        list(read_journal(path, before))
