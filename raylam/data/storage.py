"""Where datasets live: a local directory or a remote URI (s3://, gs://, ...) through pyarrow.fs.

Everything that writes goes to a temporary name first and is renamed when whole, so a reader
(or a rerun after a crash) never sees half a file under its final name.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from typing import Any

import pyarrow.fs as pafs

TMP_MARK = ".tmp-"


@dataclass(frozen=True)
class Location:
    """A filesystem plus a root path on it; ``uri`` is what users typed (kept for messages)."""

    fs: pafs.FileSystem
    root: str
    uri: str

    def path(self, name: str) -> str:
        return f"{self.root.rstrip('/')}/{name}"

    def url(self, name: str) -> str:
        """A path that Ray Data / WebDataset readers accept for member ``name``."""
        if isinstance(self.fs, pafs.LocalFileSystem):
            return self.path(name)
        scheme = self.uri.split("://", 1)[0]
        return f"{scheme}://{self.path(name)}"

    def exists(self, name: str) -> bool:
        return self.fs.get_file_info(self.path(name)).type == pafs.FileType.File

    def size(self, name: str) -> int:
        return self.fs.get_file_info(self.path(name)).size

    def list(self) -> list[str]:
        """Base names of the files directly under the root (empty if the root does not exist)."""
        selector = pafs.FileSelector(self.root, allow_not_found=True, recursive=False)
        return sorted(
            info.base_name for info in self.fs.get_file_info(selector) if info.type == pafs.FileType.File
        )

    def makedirs(self) -> None:
        self.fs.create_dir(self.root, recursive=True)

    def open_read(self, name: str):
        return self.fs.open_input_stream(self.path(name))

    def write_temporary(self, name: str, writer) -> tuple[str, Any]:
        """Call ``writer(stream)`` on a fresh temporary file; returns its name and writer's result.

        A failure removes the temporary; the caller renames it into place when the file is whole.
        """
        tmp = f"{name}{TMP_MARK}{uuid.uuid4().hex[:8]}"
        try:
            with self.fs.open_output_stream(self.path(tmp)) as stream:
                result = writer(stream)
        except BaseException:
            try:
                self.fs.delete_file(self.path(tmp))
            except OSError:
                pass
            raise
        return tmp, result

    def rename(self, src: str, dst: str) -> None:
        self.fs.move(self.path(src), self.path(dst))

    def write_atomic(self, name: str, writer) -> Any:
        """Write through a temporary and rename it to ``name``: readers never see half a file."""
        tmp, result = self.write_temporary(name, writer)
        self.rename(tmp, name)
        return result

    def write_json(self, name: str, obj: Any) -> None:
        data = json.dumps(obj, indent=2, sort_keys=True).encode()
        self.write_atomic(name, lambda stream: stream.write(data))

    def read_json(self, name: str) -> Any:
        with self.open_read(name) as stream:
            raw = stream.read()
        try:
            return json.loads(raw)
        except json.JSONDecodeError as err:
            raise ValueError(f"{self.url(name)}: not valid JSON ({err})") from None

    def remove_stale_temporaries(self) -> list[str]:
        """Delete temporaries left by an interrupted writer; returns their names."""
        stale = [name for name in self.list() if TMP_MARK in name]
        for name in stale:
            self.fs.delete_file(self.path(name))
        return stale


def resolve(uri: str) -> Location:
    """Turn a local path or a filesystem URI into a :class:`Location`."""
    if "://" in uri and not uri.startswith("file://"):
        fs, root = pafs.FileSystem.from_uri(uri)
        return Location(fs=fs, root=root.rstrip("/"), uri=uri)
    path = uri[len("file://"):] if uri.startswith("file://") else uri
    return Location(fs=pafs.LocalFileSystem(), root=os.path.abspath(os.path.expanduser(path)), uri=uri)


def local_mirror(uri: str, cache_dir: str | None = None) -> str:
    """A local directory holding a copy of the folder at ``uri`` (returned as is when local).

    For inputs every node reads as files (background videos): each node copies the folder once into
    its cache (``RAYLAM_CACHE``, default ``~/.cache/raylam``), through a temporary name and a marker
    written last, so a copy interrupted half way is made again, never used."""
    import hashlib
    import shutil

    if "://" not in uri or uri.startswith("file://"):
        return uri[len("file://"):] if uri.startswith("file://") else uri
    cache = cache_dir or os.environ.get("RAYLAM_CACHE") or os.path.expanduser("~/.cache/raylam")
    target = os.path.join(cache, "mirrors", hashlib.sha1(uri.rstrip("/").encode()).hexdigest()[:16])
    marker = os.path.join(target, ".complete")
    if os.path.exists(marker):
        return target
    source = resolve(uri)
    if source.fs.get_file_info(source.root).type != pafs.FileType.Directory:
        raise FileNotFoundError(f"{uri}: no such folder")
    tmp = f"{target}{TMP_MARK}{uuid.uuid4().hex[:8]}"
    os.makedirs(tmp)
    try:
        pafs.copy_files(source.root, tmp, source_filesystem=source.fs, destination_filesystem=pafs.LocalFileSystem())
        with open(os.path.join(tmp, ".complete"), "w") as f:
            f.write(uri)
        try:
            os.replace(tmp, target)  # whole copies only ever appear under the final name
        except OSError:
            if not os.path.exists(marker):  # not another process's finished copy
                raise
            shutil.rmtree(tmp, ignore_errors=True)  # another process on this node was first
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return target
