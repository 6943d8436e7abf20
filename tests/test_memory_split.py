"""edgesdk.memory.split_layers: which layers each worker holds (no worker needed)."""
from __future__ import annotations

import pytest

from edgesdk import memory
from edgesdk.errors import MemoryBudgetError


MIB = 1 << 20


def test_split_gives_layers_in_proportion_to_what_each_worker_offers():
    plan = memory.split_layers("m.gguf", 512, [("a:1", 110 * MIB), ("b:1", 330 * MIB)], [10 * MIB] * 30,
                               fixed_bytes=5 * MIB, output_bytes=20 * MIB)
    a, b = plan.shares
    assert (a.first, a.end, b.first, b.end) == (0, 8, 8, 30)
    assert not a.holds_output and b.holds_output
    assert a.bytes == 8 * 10 * MIB + 5 * MIB and b.bytes == 22 * 10 * MIB + 5 * MIB + 20 * MIB
    # llama.cpp's tensor_split: layers per device, the output head's slot on the last.
    assert plan.tensor_split() == [8.0, 23.0]


def test_split_falls_back_to_filling_in_order_when_proportions_overflow():
    # Proportions would give the first worker 15 layers; uneven layers make them overflow it.
    layers = [30 * MIB] * 10 + [1 * MIB] * 20
    plan = memory.split_layers("m.gguf", 512, [("a:1", 200 * MIB), ("b:1", 200 * MIB)], layers, 0, 0)
    assert [s.n_layers for s in plan.shares] == [6, 24]    # 190 MiB of room each after the 5% margin
    assert all(s.bytes <= s.free for s in plan.shares)


def test_split_refuses_with_every_workers_numbers():
    with pytest.raises(MemoryBudgetError) as info:
        memory.split_layers("/x/m.gguf", 1024, [("a:1", 100 * MIB), ("b:2", 50 * MIB)], [10 * MIB] * 30, 0, 0)
    message = str(info.value)
    assert "m.gguf does not fit its workers at n_ctx=1024" in message
    assert "a:1 offers 100 MiB" in message and "b:2 offers 50 MiB" in message and "300 MiB" in message
