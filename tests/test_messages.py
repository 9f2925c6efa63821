"""The messages between naiad's processes, in process: each kind a pipe carries arrives as itself, with
its fields, and a message of a kind the pipe does not carry is refused where it is written."""
from __future__ import annotations

import os
import threading
from typing import NamedTuple

import pytest

from naiad.batching import processes
from naiad.daemon import channel
from naiad.daemon.errors import Unavailable


@pytest.mark.parametrize("codec", [channel.CODEC, processes.CODEC], ids=["channel", "worker pipes"])
def test_every_kind_arrives_as_itself(codec):
    for kind in codec.kinds:
        # fields of every sort a message holds: numbers, text, nested tuples and lists, an error
        sample = (7, "text", (1, [2.5, b"bytes"]), None, Unavailable("gone"), {"key": 1})
        message = kind(*(sample[i % len(sample)] for i in range(len(kind._fields))))
        arrived = codec.loads(memoryview(codec.dumps(message)))
        assert type(arrived) is kind
        for name in kind._fields:
            expected, got = getattr(message, name), getattr(arrived, name)
            assert type(got) is type(expected)
            assert str(got) == str(expected)


def test_a_kind_the_pipe_does_not_carry_is_refused():
    class Stranger(NamedTuple):
        value: int

    with pytest.raises(KeyError):
        channel.CODEC.dumps(Stranger(1))


def test_a_receiver_polls_for_its_next_message():
    """poll() says whether something can be read within the time: a message, or the pipe's end."""
    read_end, write_end = os.pipe()
    receiver = processes.Receiver(read_end)
    try:
        assert receiver.poll(0.002) is False
        sender = threading.Timer(0.01, processes.send, (write_end, processes.SettingUp()))
        sender.start()
        assert receiver.poll(10) is True
        sender.join()
        assert type(receiver.receive()) is processes.SettingUp
        assert receiver.poll(0.002) is False
        os.close(write_end)
        write_end = None
        assert receiver.poll(10) is True
        assert receiver.receive() is None
    finally:
        os.close(read_end)
        if write_end is not None:
            os.close(write_end)
