"""Triton's system shared memory extension: a client on the same host registers a POSIX shared memory region
(`/dev/shm/KEY`) under a name, then sends input tensors from it and has outputs written into it, so tensor bytes
do not travel over the socket. Names and messages as Triton's (`register`, `unregister`, `status`; inputs and
outputs carry the parameters `shared_memory_region`, `shared_memory_byte_size`, `shared_memory_offset`).

Every use is bounded and checked before anything is read or written: a key is a plain name (no path), a region
lies inside its file, at most MAX_REGIONS regions of at most the server's region size limit are registered, and an
input or output range lies inside its region. Mistakes are `InputError`s (400 / INVALID_ARGUMENT).
"""

from __future__ import annotations

import mmap
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

from ..errors import InputError

SHM_DIR = Path("/dev/shm")
KEY = re.compile(r"^/?[A-Za-z0-9_.\-]{1,200}$")
MAX_REGIONS = 64
REGION_PARAMS = ("shared_memory_region", "shared_memory_byte_size", "shared_memory_offset")


@dataclass
class Region:
    name: str
    key: str
    offset: int
    byte_size: int
    mapping: mmap.mmap

    def status(self) -> dict:
        return {"name": self.name, "key": self.key, "offset": self.offset, "byte_size": self.byte_size}


class SharedMemoryRegions:
    """The registered regions of one server; safe to use from the event loop and the batcher's thread."""

    def __init__(self, max_region_bytes: int, max_regions: int = MAX_REGIONS):
        self.max_region_bytes = max_region_bytes
        self.max_regions = max_regions
        self._regions: dict[str, Region] = {}
        self._lock = threading.Lock()

    def register(self, name: str, key: str, offset: int, byte_size: int) -> None:
        if not isinstance(name, str) or not name:
            raise InputError("shared memory: a region needs a non-empty name")
        if not isinstance(key, str) or not KEY.match(key) or key.strip("/") in (".", ".."):
            raise InputError(f"shared memory region {name!r}: key {key!r} is not a shared memory name (letters, "
                             "digits, '_', '.', '-', an optional leading '/')")
        for what, value in (("offset", offset), ("byte_size", byte_size)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise InputError(f"shared memory region {name!r}: {what} must be a non-negative integer, got {value!r}")
        if byte_size == 0 or byte_size > self.max_region_bytes:
            raise InputError(f"shared memory region {name!r}: byte_size {byte_size} must be in 1..{self.max_region_bytes} "
                             "(the server's limit: --max-request-bytes)")
        with self._lock:
            if name in self._regions:
                raise InputError(f"shared memory region {name!r} is already registered: unregister it first")
            if len(self._regions) >= self.max_regions:
                raise InputError(f"shared memory: {self.max_regions} regions are registered, the most this server holds")
            path = SHM_DIR / key.lstrip("/")
            try:
                fd = os.open(path, os.O_RDWR | os.O_NOFOLLOW)
            except OSError as e:
                raise InputError(f"shared memory region {name!r}: cannot open key {key!r}: {e.strerror}") from None
            try:
                size = os.fstat(fd).st_size
                if offset + byte_size > size:
                    raise InputError(f"shared memory region {name!r}: offset {offset} + byte_size {byte_size} is past "
                                     f"the end of {key!r} ({size} bytes)")
                mapping = mmap.mmap(fd, offset + byte_size)
            finally:
                os.close(fd)
            self._regions[name] = Region(name, key, offset, byte_size, mapping)

    def unregister(self, name: str | None = None) -> None:
        """One region, or every region when `name` is empty (as Triton's)."""
        with self._lock:
            names = [name] if name else list(self._regions)
            for n in names:
                region = self._regions.pop(n, None)
                if region is not None:
                    region.mapping.close()

    def status(self, name: str | None = None) -> list[dict]:
        with self._lock:
            if name:
                if name not in self._regions:
                    raise InputError(f"shared memory region {name!r} is not registered")
                return [self._regions[name].status()]
            return [r.status() for r in self._regions.values()]

    def _span(self, name: str, offset: int, byte_size: int, what: str) -> tuple[Region, int]:
        region = self._regions.get(name)
        if region is None:
            raise InputError(f"{what}: shared memory region {name!r} is not registered")
        if offset < 0 or byte_size < 0 or offset + byte_size > region.byte_size:
            raise InputError(f"{what}: bytes {offset}..{offset + byte_size} are outside shared memory region {name!r} "
                             f"({region.byte_size} bytes)")
        return region, region.offset + offset

    def read(self, name: str, offset: int, byte_size: int, what: str) -> bytes:
        """A copy of the bytes (the client may rewrite its region as soon as it has its answer)."""
        with self._lock:
            region, start = self._span(name, offset, byte_size, what)
            return region.mapping[start:start + byte_size]

    def write(self, name: str, offset: int, byte_size: int, data: bytes, what: str) -> None:
        if len(data) > byte_size:
            raise InputError(f"{what}: {len(data)} bytes do not fit the {byte_size} bytes given in shared memory "
                             f"region {name!r}")
        with self._lock:
            region, start = self._span(name, offset, len(data), what)
            region.mapping[start:start + len(data)] = data


def region_params(params: dict, what: str) -> tuple[str, int, int] | None:
    """(region, offset, byte_size) from a tensor's parameters, or None when it names no region."""
    name = params.get("shared_memory_region")
    if name is None:
        return None
    size, offset = params.get("shared_memory_byte_size"), params.get("shared_memory_offset", 0)
    if not isinstance(name, str) or not isinstance(size, int) or not isinstance(offset, int) \
            or isinstance(size, bool) or isinstance(offset, bool):
        raise InputError(f"{what}: shared_memory_region must be a string, shared_memory_byte_size and "
                         "shared_memory_offset integers")
    return name, offset, size


__all__ = ["REGION_PARAMS", "SharedMemoryRegions", "region_params"]
