"""Byte access to a prepared dataset's files, local or on any tensorstore key-value store (``gs://``, ``s3://``,
``file://``, ``memory://``).

Local paths are read with ``os.pread`` on one file descriptor per file and process (no mmap: the resident memory of
a reader stays what it copies); remote paths through ``tensorstore.KvStore`` byte-range reads. Descriptors and
stores are opened lazily and per process id, so an object holding a ``ShardReader`` can be pickled into grain's
worker processes and reopens its files there.
"""

from __future__ import annotations

import os
import threading

_SCHEME = "://"


def is_remote(path: str) -> bool:
    """True for a URL (``gs://bucket/x``); plain and ``~`` paths are local."""
    return _SCHEME in path


def join(directory: str, name: str) -> str:
    return f"{directory.rstrip('/')}/{name}" if is_remote(directory) else os.path.join(directory, name)


def normalize(path: str) -> str:
    """``~`` expanded and made absolute for local paths; URLs unchanged (without a trailing slash)."""
    return path.rstrip("/") if is_remote(path) else os.path.abspath(os.path.expanduser(path))


def _kvstore(directory: str):
    import tensorstore as ts

    return ts.KvStore.open(directory.rstrip("/") + "/").result()


def read_bytes(path: str) -> bytes:
    """The whole file; FileNotFoundError names it when missing."""
    if not is_remote(path):
        with open(path, "rb") as f:
            return f.read()
    directory, name = path.rsplit("/", 1)
    result = _kvstore(directory).read(name).result()
    if result.state != "value":
        raise FileNotFoundError(f"{path} does not exist")
    return bytes(result.value)


def exists(path: str) -> bool:
    if not is_remote(path):
        return os.path.exists(path)
    directory, name = path.rsplit("/", 1)
    return _kvstore(directory).read(name).result().state == "value"


class ShardReader:
    """Byte ranges of the files of one directory (see the module docstring)."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        self._pid = -1
        self._handles: dict[str, int] = {}
        self._store = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict:
        return {"directory": self.directory}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["directory"])

    def _reset_if_forked(self) -> None:
        if self._pid != os.getpid():
            self._pid, self._handles, self._store = os.getpid(), {}, None

    def read(self, name: str, start: int, stop: int) -> bytes:
        """Bytes ``[start, stop)`` of file ``name``; a short read (a truncated file) raises ValueError."""
        with self._lock:  # only the opening: reads run in parallel (pread and tensorstore are thread-safe)
            self._reset_if_forked()
            if is_remote(self.directory):
                if self._store is None:
                    self._store = _kvstore(self.directory)
                store, fd = self._store, None
            else:
                fd = self._handles.get(name)
                if fd is None:
                    fd = self._handles[name] = os.open(os.path.join(self.directory, name), os.O_RDONLY)
        if fd is None:
            data = bytes(store.read(name, byte_range=slice(start, stop)).result().value)
        else:
            data = os.pread(fd, stop - start, start)
        if len(data) != stop - start:
            raise ValueError(f"{join(self.directory, name)} is truncated: bytes [{start}, {stop}) asked, "
                             f"{len(data)} read; prepare the dataset again (tools.prepare_data --overwrite)")
        return data

    def close(self) -> None:
        with self._lock:
            if self._pid == os.getpid():
                for fd in self._handles.values():
                    os.close(fd)
            self._handles, self._store = {}, None
