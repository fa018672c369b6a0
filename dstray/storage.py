"""Paths that are either local folders or pyarrow-filesystem URIs (``s3://``, ``gs://``...).

Every output of the Ray layer goes through these helpers so that a job writes to a
local folder on a laptop and to object storage on a cluster with the same code.
"""

from __future__ import annotations

import io
import os
import posixpath
import uuid

import pyarrow.fs as pafs


def resolve(location: str) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path)`` for a local path or a URI."""
    if "://" in location:
        return pafs.FileSystem.from_uri(location)
    return pafs.LocalFileSystem(), os.path.abspath(location)


def join(location: str, *parts: str) -> str:
    """Join path parts onto a local path or URI."""
    if "://" in location:
        return posixpath.join(location, *parts)
    return os.path.join(location, *parts)


def exists(location: str) -> bool:
    fs, path = resolve(location)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def require_folder(location: str, option: str = "--out") -> None:
    """ValueError when ``location`` exists and is not a folder (an output folder given as a file's path)."""
    fs, path = resolve(location)
    kind = fs.get_file_info(path).type
    if kind not in (pafs.FileType.NotFound, pafs.FileType.Directory):
        raise ValueError(f"{option} {location} is a file; give a folder (it is created when missing)")


def read_bytes(location: str) -> bytes:
    fs, path = resolve(location)
    with fs.open_input_stream(path) as f:
        return f.read()


def write_bytes(location: str, data: bytes) -> None:
    """Write a whole file atomically (temporary name, then move into place)."""
    fs, path = resolve(location)
    fs.create_dir(posixpath.dirname(path) if "://" in location else os.path.dirname(path), recursive=True)
    tmp = f"{path}.tmp-{uuid.uuid4().hex[:8]}"
    with fs.open_output_stream(tmp) as f:
        f.write(data)
    fs.move(tmp, path)


def save_torch(obj, location) -> None:
    """``torch.save`` of ``obj`` to a local path or URI, atomically (:func:`write_bytes`): a reader never sees half a file."""
    import torch  # the only torch use here: paths and bytes stay importable without it

    buf = io.BytesIO()
    torch.save(obj, buf)
    write_bytes(str(location), buf.getvalue())


def list_names(location: str) -> list[str]:
    """Base names of the files directly inside a folder ([] if it does not exist)."""
    fs, path = resolve(location)
    if fs.get_file_info(path).type == pafs.FileType.NotFound:
        return []
    infos = fs.get_file_info(pafs.FileSelector(path, recursive=False))
    return sorted(posixpath.basename(i.path) for i in infos if i.type == pafs.FileType.File)


def absolute(location: str | None) -> str | None:
    """A local path made absolute against the driver's working directory (URIs and None as given).

    Ray workers run in other working directories: every path handed to them must be absolute.
    """
    if location is None or "://" in location:
        return location
    return os.path.abspath(os.path.expanduser(location))


def generated_parquet(locations: list[str]) -> list[str]:
    """Generated datasets as Parquet locations: an output folder of ``dstray generate`` (it has ``_shards/``
    and ``data/``) means its ``data/``; a ``data/`` folder or a Parquet file is taken as given."""
    out = []
    for p in locations:
        if not exists(p):
            raise FileNotFoundError(f"generated dataset {p} does not exist; give the output folder of "
                                    "`dstray generate` (or its data/ folder, or a Parquet file)")
        data = join(p, "data")
        out.append(data if exists(join(p, "_shards")) and exists(data) else p)
    return out
