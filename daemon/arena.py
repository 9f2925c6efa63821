"""Tensor arenas: shared-memory files through which large tensors pass between a frontend process and
the model process, so that their bytes do not travel through the channel. Each side writes into an
arena of its own, and the other side only reads it.

- A frontend's arena holds large inputs. The model process maps it as an internal shared-memory
  region; a request names its part of it as a SharedInput like a client's region, marked internal so
  that no client can name it. Space is taken when the request goes out and given back when its reply
  comes, which is after the model is done with it.
- The model process's arena for a frontend holds large outputs; the frontend copies them out as the
  reply comes and gives the space back with a Release message.

A tensor that does not fit travels in the message instead."""
from __future__ import annotations

import logging
import os

import numpy as np

from naiad.batching.processes import Segment
from naiad.daemon import datatypes
from naiad.daemon.inference import InferRequest, RegionSlice, SharedInput

log = logging.getLogger(__name__)

SMALLEST = 64 << 10        # tensors smaller than this travel in the message: copying them is cheaper
SIZE = 128 << 20           # a frontend's arena, in /dev/shm
_ALIGN = 64


class Arena:
    def __init__(self, size: int):
        # its memory is reserved at once: a /dev/shm too small fails here, not with SIGBUS on a write
        self.segment = Segment.new(size)
        self.name = os.path.basename(self.segment.path)   # its region name in the model process
        self.free: list[tuple[int, int]] = [(0, size)]   # (offset, size), by offset

    @classmethod
    def create(cls, size: int = SIZE) -> "Arena | None":
        """An arena, or None where shared memory cannot hold one (the tensors then travel in messages)."""
        try:
            return cls(size)
        except OSError as e:
            log.warning("no tensor arena of %d MiB in shared memory (%s); tensors travel in messages",
                        size >> 20, e)
            return None

    def put(self, array) -> int | None:
        """Copy a large array into the arena: its offset; None when it is small, of BYTES, or does not
        fit (it then travels in the message)."""
        if not isinstance(array, np.ndarray) or array.nbytes < SMALLEST or array.dtype == object:
            return None
        offset = self._take(array.nbytes)
        if offset is not None:
            np.ndarray(array.shape, array.dtype, buffer=self.segment.map, offset=offset)[...] = array
        return offset

    def place(self, request: InferRequest) -> list[tuple[int, int]]:
        """Move the request's large inputs into the arena; the blocks they took."""
        taken = []
        for name, tensor in request.inputs.items():
            offset = self.put(tensor)
            if offset is not None:
                taken.append((offset, tensor.nbytes))
                where = RegionSlice(self.name, offset, tensor.nbytes)
                request.inputs[name] = SharedInput(datatypes.of_array(tensor), tensor.shape, where, internal=True)
        return taken

    def give_back(self, taken: list[tuple[int, int]]) -> None:
        for offset, size in taken:
            self._give(offset, _aligned(size))

    def _take(self, size: int) -> int | None:
        size = _aligned(size)
        for i, (offset, free) in enumerate(self.free):
            if free >= size:
                if free == size:
                    del self.free[i]
                else:
                    self.free[i] = (offset + size, free - size)
                return offset
        return None

    def _give(self, offset: int, size: int) -> None:
        blocks = self.free
        i = 0
        while i < len(blocks) and blocks[i][0] < offset:
            i += 1
        blocks.insert(i, (offset, size))
        # join with the next block, then with the previous one
        if i + 1 < len(blocks) and offset + size == blocks[i + 1][0]:
            blocks[i] = (offset, size + blocks[i + 1][1])
            del blocks[i + 1]
        if i > 0 and blocks[i - 1][0] + blocks[i - 1][1] == offset:
            blocks[i - 1] = (blocks[i - 1][0], blocks[i - 1][1] + blocks[i][1])
            del blocks[i]

    def close(self) -> None:
        self.segment.close(unlink=True)


def _aligned(size: int) -> int:
    return (size + _ALIGN - 1) & ~(_ALIGN - 1)
