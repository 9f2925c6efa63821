"""DeviceArray describes device memory without touching it: its rows, shape and interface, in process
(no GPU needed, as nothing is read or written)."""
from __future__ import annotations

import numpy as np
import pytest

from naiad.daemon.cuda import DeviceArray


def test_rows_are_views_at_the_right_address():
    owner = object()
    array = DeviceArray(0x10000, (8, 3, 4), np.float32, device_id=1, owner=owner)
    rows = array[2:5]
    assert rows.pointer == 0x10000 + 2 * 3 * 4 * 4
    assert rows.shape == (3, 3, 4) and rows.nbytes == 3 * 48
    assert rows.device_id == 1 and rows.owner is owner and rows.dtype == np.float32
    assert array[6:20].shape == (2, 3, 4)
    with pytest.raises(ValueError, match="steps of one row"):
        array[::2]


def test_cuda_array_interface():
    interface = DeviceArray(0x2000, (2, 5), np.int64, 0).__cuda_array_interface__
    assert interface == {"shape": (2, 5), "typestr": "<i8", "data": (0x2000, False), "version": 3,
                         "strides": None}
