"""What both protocols share: a call as data (what to send, how its reply becomes the result), and the
checks that turn a user's inputs and outputs into tensors for the wire."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from naiad.clients import tensors


@dataclass(frozen=True, slots=True)
class Call:
    """One unary call. gRPC: `method` is the RPC's name and `request` its message. HTTP: `method` is
    GET or POST, `path` the URL's path, `request` the body (or None). `parse` turns the reply into the
    result and raises ClientError for a failed one."""
    method: str
    request: Any
    parse: Callable[[Any], Any]
    path: str = ""
    headers: dict | None = None


class Region(Protocol):
    """A registered shared-memory region (naiad.clients.shm) as an input's data or an output's place."""
    name: str
    byte_size: int
    datatype: str | None     # of the tensor written into it, if any
    shape: list[int] | None
    nbytes: int              # the bytes that tensor takes

    def view(self, datatype: str, shape: list[int], nbytes: int | None = None) -> Any: ...


class RegionBase:
    """What naiad.clients.shm's regions derive from (so that an input is told from an array fast)."""


def is_region(value) -> bool:
    return isinstance(value, RegionBase)


@dataclass(frozen=True, slots=True)
class Input:
    name: str
    datatype: str
    shape: list[int]
    raw: bytes | None            # the data as raw bytes (None: in `region`, or as `array`)
    region: Region | None = None
    array: np.ndarray | None = None


def inputs_of(inputs: Mapping[str, Any], raw: bool = True) -> list[Input]:
    """Each input as the wire needs it: an array's raw bytes (or the array, raw=False), or the region
    that holds its data."""
    found = []
    for name, value in inputs.items():
        if type(value) is not np.ndarray and is_region(value):
            if value.datatype is None:
                raise ValueError(f"input '{name}': shared-memory region '{value.name}' holds no tensor "
                                 f"yet; write an array into it first")
            found.append(Input(name, value.datatype, list(value.shape), None, value))
            continue
        array = tensors.as_array(name, value)
        try:
            datatype = tensors.datatype_of(array)
        except TypeError as e:
            raise TypeError(f"input '{name}': {e}") from None
        if raw:
            found.append(Input(name, datatype, list(array.shape), tensors.to_raw(array)))
        else:
            found.append(Input(name, datatype, list(array.shape), None, array=array))
    return found


def outputs_of(outputs: Iterable[str] | Mapping[str, Any] | None) -> list[tuple[str, Region | None]] | None:
    """The requested outputs as (name, region or None); None asks for every output."""
    if outputs is None:
        return None
    if isinstance(outputs, str):
        raise TypeError(f"outputs must be a list of names or a dict of name to region, not the string "
                        f"'{outputs}'")
    if isinstance(outputs, Mapping):
        return [(name, region if region is not None and is_region(region) else _no_region(name, region))
                for name, region in outputs.items()]
    return [(name, None) for name in outputs]


def _no_region(name: str, value) -> None:
    if value is not None:
        raise TypeError(f"output '{name}': expected a shared-memory region or None, got "
                        f"{type(value).__name__}")


def region_parameters(region: Region, nbytes: int) -> dict:
    return {"shared_memory_region": region.name, "shared_memory_byte_size": nbytes}


def output_regions(outputs: list[tuple[str, Region | None]] | None) -> dict[str, Region]:
    return {name: region for name, region in outputs or () if region is not None}


def version_text(version) -> str:
    return "" if version is None else str(version)


def placed(regions: dict[str, Region], name: str, datatype: str, shape: list[int], parameters: dict):
    """An output the server wrote into a region: an array viewing it."""
    return regions[name].view(datatype, shape, parameters.get("shared_memory_byte_size"))
