"""This process's memory mappings, read from /proc/self/smaps (Linux), for tests of where memory lies."""
from __future__ import annotations

from typing import Dict, List, Tuple


def mappings() -> List[Tuple[int, int, Dict[str, List[str]]]]:
    """(start, end, {field: its values}) of each mapping, e.g. fields["Rss"] == ["1234", "kB"]."""
    found: List[Tuple[int, int, Dict[str, List[str]]]] = []
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head, *values = line.split()
            if "-" in head and not head.endswith(":"):
                lo, hi = (int(x, 16) for x in head.split("-"))
                found.append((lo, hi, {}))
            else:
                found[-1][2][head.rstrip(":")] = values
    return found
