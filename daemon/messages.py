"""Typed messages between naiad's processes, sent as plain tuples.

In the code each message is a NamedTuple of its kind. pickle would store a class by its module and name
and call back into Python to build it again, which costs more than the rest of a small message; so a
message travels as a tuple of its kind's number and its fields, which pickles and loads in C, and is its
kind again when read. Fields may hold anything pickle takes."""
from __future__ import annotations

import pickle
from typing import Any


class Codec:
    """The kinds of message one pipe carries: both of its ends make the codec from the same list."""

    def __init__(self, *kinds: type[tuple]):
        self.kinds = kinds
        self.numbers = {kind: number for number, kind in enumerate(kinds)}

    def dumps(self, message: tuple) -> bytes:
        return pickle.dumps((self.numbers[type(message)], *message), protocol=pickle.HIGHEST_PROTOCOL)

    def loads(self, data: Any) -> tuple:
        fields = pickle.loads(data)
        return tuple.__new__(self.kinds[fields[0]], fields[1:])
