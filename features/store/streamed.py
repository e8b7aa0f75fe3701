"""A store read only front to back: :class:`StreamedStore`, for feature stores that can be streamed but not seeked.

Object stores reached through a command line tool (``aws s3 cp s3://bucket/key -``, ``gsutil cat``, ``curl``) are
streamed the way webdataset streams them: a ``pipe:`` location is a shell command that writes one of the store's
files to its standard output, with ``{file}`` where the file's name goes::

    pipe:aws s3 cp s3://my-bucket/coco-train/{file} -
    pipe:gsutil cat gs://my-bucket/coco-train/{file}

A folder and an ``http(s)://`` URL can be streamed too (``data.stream=true``), although they also allow random access.

Opening reads the manifest and every shard's sidecar (the image ids, byte offsets and checksums, a few kB each; with
``pipe:`` one command per file, eight at a time); the shards themselves are read only by :meth:`StreamedStore.read_shard`,
front to back, each sample checked against its checksum and the shard's length against the manifest. A stream that
breaks (a failed command, a dropped connection, a response cut short) is reopened and read again up to the next sample,
``retries`` times, then a :class:`~features.errors.ShardError` names the shard and the command or URL. A sample that
fails its checksum is an error at once (the bytes arrived; they are not the store's).

The data plan built on it (which shards, in what order, through a shuffle buffer) is the engine's
(:mod:`vlm.data.streamed`); this module only reads.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import os
import shlex
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from features.errors import ShardError, StoreError
from features.store.format import MANIFEST, decode_sample, read_checked
from features.store.manifest import StoreShape, parse_manifest
from features.store.remote import HttpFiles, is_url, remote_settings
from features.store.writer import parse_sidecar

__all__ = ["StreamedStore", "is_pipe", "open_store", "random_access"]

_PLACEHOLDER = "{file}"
_SKIP_CHUNK = 1 << 20


def is_pipe(location: object) -> bool:
    """Whether ``location`` is a ``pipe:`` command (a store that can only be streamed)."""
    return isinstance(location, str) and location.startswith("pipe:")


class _Source:
    """Whole files and front-to-back streams of the files of one store: a folder, a URL or a ``pipe:`` command."""

    def __init__(self, location: str, retries: int, timeout: float) -> None:
        self.location, self.retries, self.timeout = location, retries, timeout
        self.kind = "pipe" if is_pipe(location) else "http" if is_url(location) else "folder"
        if self.kind == "pipe":
            self.command = location[len("pipe:"):].strip()
            if _PLACEHOLDER not in self.command:
                raise StoreError(f"feature source {location!r}: a pipe: source is a command with {_PLACEHOLDER} where "
                                 "the name of the store's file goes, e.g. 'pipe:aws s3 cp s3://bucket/coco-train/"
                                 "{file} -'")
        elif self.kind == "http":
            self.http = HttpFiles(location, retries=retries, timeout=timeout)
        elif not Path(location).is_dir():
            raise StoreError(f"feature store {location} not found (a folder, an http(s):// URL or a pipe: command)")

    def describe(self, name: str) -> str:
        if self.kind == "pipe":
            return f"{name} (from `{self._command(name)}`)"
        return self.http.url(name) if self.kind == "http" else str(Path(self.location) / name)

    def _command(self, name: str) -> str:
        return self.command.replace(_PLACEHOLDER, shlex.quote(name))

    def get(self, name: str) -> bytes:
        """The whole file ``name`` (the manifest, a sidecar)."""
        if self.kind == "http":
            return self.http.get(name)
        if self.kind == "folder":
            try:
                return (Path(self.location) / name).read_bytes()
            except OSError as exc:
                raise StoreError(f"{self.describe(name)} is unreadable: {exc.strerror or exc}") from None
        last = ""
        for _ in range(self.retries + 1):
            done = subprocess.run(self._command(name), shell=True, capture_output=True, timeout=self.timeout * 10)
            if done.returncode == 0:
                return done.stdout
            last = done.stderr.decode(errors="replace").strip()[-500:]
        raise StoreError(f"{self.describe(name)} failed with exit status {done.returncode} after {self.retries + 1} "
                         f"tries: {last or '(no message)'}")

    def open(self, name: str) -> _Stream:
        """A front-to-back stream of the file ``name``."""
        if self.kind == "folder":
            try:
                return _Stream(open(Path(self.location) / name, "rb"))  # noqa: SIM115
            except OSError as exc:
                raise ShardError(f"shard {self.describe(name)} cannot be opened: {exc.strerror or exc}") from None
        if self.kind == "http":
            try:
                response = urllib.request.urlopen(self.http.url(name), timeout=self.timeout)  # noqa: S310
            except urllib.error.HTTPError as exc:
                raise _Broken(f"HTTP {exc.code} {exc.reason}", retry=exc.code >= 500 or exc.code == 429) from None
            except (OSError, urllib.error.URLError) as exc:
                raise _Broken(f"{exc}") from None
            return _Stream(response)
        err = tempfile.TemporaryFile()  # noqa: SIM115 - closed by the stream; a file never blocks a chatty command
        process = subprocess.Popen(self._command(name), shell=True, stdout=subprocess.PIPE, stderr=err)
        return _Stream(process.stdout, process=process, stderr=err)


class _Broken(Exception):
    """A stream that failed in transport (worth reading again)."""

    def __init__(self, message: str, retry: bool = True) -> None:
        super().__init__(message)
        self.retry = retry


class _Stream:
    """A file read front to back, counting bytes; a ``pipe:`` command's exit status is checked on :meth:`finish`."""

    def __init__(self, handle: IO[bytes] | Any, process: subprocess.Popen | None = None,
                 stderr: IO[bytes] | None = None) -> None:
        self.handle, self.process, self.stderr = handle, process, stderr
        self.pos = 0

    def read(self, size: int) -> bytes:
        """Up to ``size`` bytes; fewer only at the end of the stream."""
        parts, left = [], size
        try:
            while left:
                chunk = self.handle.read(left)
                if not chunk:
                    break
                parts.append(chunk)
                left -= len(chunk)
        except OSError as exc:  # a reset connection, a timeout
            raise _Broken(f"{exc}") from None
        data = b"".join(parts)
        self.pos += len(data)
        return data

    def skip(self, size: int) -> int:
        """Read and drop ``size`` bytes; returns how many there were."""
        done = 0
        while done < size:
            got = len(self.read(min(_SKIP_CHUNK, size - done)))
            if not got:
                break
            done += got
        return done

    def failure(self) -> str | None:
        """Once the stream has ended: the command's failure (``exit status N: message``), if it failed."""
        if self.process is None:
            return None
        try:
            status = self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            return None
        if status == 0:
            return None
        self.stderr.seek(0)
        message = self.stderr.read()[-500:].decode(errors="replace").strip()
        return f"exit status {status}: {message or '(no message)'}"

    def finish(self) -> None:
        """Close at the end of the stream; a command that failed raises :class:`_Broken` with its message."""
        message = self.failure()
        self.close()
        if message:
            raise _Broken(message)

    def close(self) -> None:
        """Close, stopping a command that still runs."""
        with contextlib.suppress(OSError):
            self.handle.close()
        if self.process is not None:
            if self.process.poll() is None:
                self.process.kill()
            self.process.wait()
            self.stderr.close()


class StreamedStore(StoreShape):
    """A feature store read shard by shard, front to back (no random access).

    It answers what the data plan needs before reading any shard — the image ids (``in``, :meth:`ids`), which shard
    holds each (:meth:`shard_ids`), the manifest — and reads a shard's samples in order with :meth:`read_shard`.

    Args:
        location: A ``pipe:`` command with ``{file}``, an ``http(s)://`` URL or a folder of a store.
        verify: Check each sample's checksum (format-2 stores).
        retries: Further reads of a stream that breaks (default ``VLM_HTTP_RETRIES``, else 3).
        timeout: Seconds to wait for a server (default ``VLM_HTTP_TIMEOUT``, else 60).

    Raises:
        StoreError: The manifest is missing, damaged or of an unfinished store; a ``pipe:`` source without ``{file}``.
        ShardError: A sidecar is missing or damaged, or lists another number of samples than the manifest.
    """

    streamed = True

    def __init__(self, location: str | os.PathLike[str], *, verify: bool = True, retries: int | None = None,
                 timeout: float | None = None) -> None:
        self.location = str(location)
        self.retries, self.timeout = remote_settings(retries, timeout)
        self.verify = verify
        self._source = _Source(self.location, self.retries, self.timeout)
        self.directory = self.location  # named in messages, as FeatureStore.directory
        self.manifest = parse_manifest(self._source.get(MANIFEST), self._source.describe(MANIFEST), self.location)
        self._names = [s["name"] for s in self.manifest["shards"]]
        self._sizes = [int(s["bytes"]) for s in self.manifest["shards"]]
        workers = 8 if self._source.kind == "pipe" else 1
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            texts = list(pool.map(lambda n: self._source.get(n.removesuffix(".tar") + ".json"), self._names))
        self._sidecars: list[dict[str, Any]] = []
        self._shard_of: dict[str, int] = {}
        for pos, (name, text, entry) in enumerate(zip(self._names, texts, self.manifest["shards"])):
            record = parse_sidecar(text, self._source.describe(name))
            if len(record["ids"]) != int(entry["num_samples"]):
                raise ShardError(f"shard {self._source.describe(name)} holds {len(record['ids'])} samples by its "
                                 f"sidecar, the manifest records {entry['num_samples']}")
            self._sidecars.append(record)
            for image_id in record["ids"]:
                self._shard_of[image_id] = pos

    @property
    def num_shards(self) -> int:
        return len(self._names)

    def __len__(self) -> int:
        return len(self._shard_of)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._shard_of

    def ids(self) -> Iterator[str]:
        """All image ids in shard order."""
        for record in self._sidecars:
            yield from record["ids"]

    def shard_ids(self, shard: int) -> list[str]:
        """The image ids of shard number ``shard`` (position in the manifest), in the order they are read."""
        return list(self._sidecars[shard]["ids"])

    def read_shard(self, shard: int) -> Iterator[dict[str, Any]]:
        """The samples of shard ``shard``, in order, as :class:`FeatureStore` returns them, each one checked.

        Raises:
            ShardError: Naming the shard (and the sample): a sample that fails its checksum or cannot be decoded; a
                shard shorter or longer than the manifest records, or a stream that keeps breaking after the retries.
        """
        name, total, record = self._names[shard], self._sizes[shard], self._sidecars[shard]
        where = self._source.describe(name)
        checksums = record.get("xxh3_64") if self.verify else None
        entries = list(zip(record["ids"], record["offsets"], record["sizes"]))
        n = 0  # samples yielded
        failures = 0
        while True:
            stream = None
            try:
                stream = self._source.open(name)
                if n:  # a reopened stream: read again up to the next sample
                    stream.skip(int(entries[n][1]) if n < len(entries) else total)
                while n < len(entries):
                    image_id, offset, size = entries[n]
                    if stream.pos < offset:
                        stream.skip(offset - stream.pos)
                    data = stream.read(size)
                    if len(data) != size:
                        raise _Broken(stream.failure() or f"cut short at byte {stream.pos} in sample {image_id!r} (bytes "
                                      f"{offset}..{offset + size}; the manifest records {total} bytes)")
                    members = read_checked(data, where, image_id, offset, size,
                                           int(checksums[n]) if checksums is not None else None, total)
                    sample = decode_sample(members, f"shard {where}, sample {image_id!r}")
                    if sample["image_id"] != image_id:
                        raise ShardError(f"shard {where}: sample {n} holds image id {sample['image_id']!r}, its "
                                         f"sidecar lists {image_id!r}")
                    n += 1
                    yield sample
                if stream.pos < total:
                    stream.skip(total - stream.pos)
                rest, extra = stream.pos, len(stream.read(1))
                if rest != total or extra:
                    raise _Broken(stream.failure() or f"{'cut short' if rest < total else 'longer than recorded'}: "
                                  f"{rest}{'+' if extra else ''} bytes, the manifest records {total}")
                stream.finish()
                return
            except _Broken as exc:
                if stream is not None:
                    stream.close()
                failures += 1
                if not exc.retry or self._source.kind == "folder" or failures > self.retries:
                    raise ShardError(f"shard {where}: {exc} (after {failures} tr{'y' if failures == 1 else 'ies'}; "
                                     f"{n} of {len(entries)} samples read)") from None
            except BaseException:
                if stream is not None:
                    stream.close()
                raise

    def __getitem__(self, image_id: str) -> dict[str, Any]:
        """One sample by id: streams its shard up to it (for one-off lookups, never for training)."""
        shard = self._shard_of.get(image_id)
        if shard is None:
            raise KeyError(image_id)
        for sample in self.read_shard(shard):
            if sample["image_id"] == image_id:
                return sample
        raise KeyError(image_id)  # unreachable: the sidecar lists it

    def close(self) -> None:
        if self._source.kind == "http":
            self._source.http.close()

    def __repr__(self) -> str:
        return f"StreamedStore({self.location!r}, {len(self)} images in {self.num_shards} shards)"


def open_store(location: str | os.PathLike[str], *, stream: bool = False) -> Any:
    """The store at ``location`` for training: a :class:`StreamedStore` when ``stream`` or for a ``pipe:`` command,
    else a :class:`~features.store.reader.FeatureStore` (random access)."""
    from features.store.reader import FeatureStore

    if stream or is_pipe(location):
        return StreamedStore(location)
    return FeatureStore(location)


def random_access(source: Any, role: str = "the held-out data") -> Any:
    """A random-access reader of ``source``: a store or a store's location. A :class:`FeatureStore` is returned as it
    is; a streamed store of a folder or URL, or a location, gives a :class:`FeatureStore` of it.

    Raises:
        StoreError: A ``pipe:`` store, which can only be streamed (refused before anything is fetched); the message
            says what to give ``role`` instead.
    """
    from features.store.reader import FeatureStore

    if isinstance(source, FeatureStore):
        return source
    location = source.location if isinstance(source, StreamedStore) else source
    if is_pipe(location):
        raise StoreError(f"{role} are read by random access, and the pipe: store {location!r} can only be "
                         "streamed: give them a store of their own (--eval-features / data.eval_features: a folder or "
                         "an http(s):// URL; `vlm features stage` copies a served store) and, for validation, "
                         "data.holdout_images=0 with --eval-data")
    return FeatureStore(location)
