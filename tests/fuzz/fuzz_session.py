"""Fuzz target: the session-file reader, edgesdk.chat._parse_session(raw, path).

The input's first byte chooses how the rest is read: as the file itself when even, or, when odd, as a
file without its sha256, which is appended: random bytes almost never carry a valid checksum, and this
way the reader's later checks (version, lengths, JSON header) are reached too. Only SessionFileError
may come out; anything else is a finding.
"""
from __future__ import annotations

import hashlib

import _fuzz

with _fuzz.instrumented("edgesdk.chat"):
    from edgesdk.chat import _parse_session
    from edgesdk.errors import SessionFileError


def one_input(data: bytes) -> None:
    raw = data[1:]
    if data[:1] and data[0] & 1:
        raw += hashlib.sha256(raw).digest()
    try:
        header, state = _parse_session(raw, "fuzz.session")
    except SessionFileError:
        return
    assert isinstance(header, dict) and isinstance(state, bytes)


if __name__ == "__main__":
    _fuzz.main(one_input)
