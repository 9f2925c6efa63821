"""The tensor arena's allocator, in process: space is taken first-fit, given back, and joined again, and
what does not fit is left to travel in the message."""
from __future__ import annotations

import numpy as np

from naiad.daemon.arena import SMALLEST, Arena
from naiad.daemon.inference import InferRequest, SharedInput


def test_blocks_are_taken_given_back_and_joined():
    arena = Arena(1 << 20)
    try:
        block = np.ones(SMALLEST // 4, np.float32)        # 64 KiB
        offsets = [arena.put(block) for _ in range(16)]
        assert offsets == [i * SMALLEST for i in range(16)]
        assert arena.put(block) is None                     # full: it travels in the message
        arena.give_back([(offsets[1], SMALLEST), (offsets[3], SMALLEST)])
        assert arena.put(np.ones(2 * SMALLEST // 4, np.float32)) is None   # two holes, neither big enough
        arena.give_back([(offsets[2], SMALLEST)])           # joins 1, 2 and 3
        assert arena.free == [(SMALLEST, 3 * SMALLEST)]
        assert arena.put(np.ones(3 * SMALLEST // 4, np.float32)) == SMALLEST
        arena.give_back([(o, SMALLEST) for o in offsets if o not in (offsets[1], offsets[2], offsets[3])])
        arena.give_back([(SMALLEST, 3 * SMALLEST)])
        assert arena.free == [(0, 1 << 20)]
    finally:
        arena.close()


def test_only_large_numeric_inputs_move_into_the_arena():
    arena = Arena(1 << 20)
    try:
        large = np.arange(SMALLEST // 4, dtype=np.float32).reshape(1, -1)
        small = np.arange(4, dtype=np.float32).reshape(1, 4)
        text = np.array([[b"x" * SMALLEST]], dtype=object)
        request = InferRequest("m", "", {"large": large, "small": small, "text": text})
        taken = arena.place(request)
        assert taken == [(0, large.nbytes)]
        moved = request.inputs["large"]
        assert isinstance(moved, SharedInput) and moved.internal and moved.where.region == arena.name
        assert request.inputs["small"] is small and request.inputs["text"] is text
        view = np.ndarray(large.shape, large.dtype, buffer=arena.segment.map, offset=moved.where.offset)
        np.testing.assert_array_equal(view, large)
        del view
    finally:
        arena.close()
