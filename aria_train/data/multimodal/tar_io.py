"""Reading tar shards: key groups in webdataset's way (layouts.py), sequentially or by offset.

Damage is reported, never raised past the reader: a truncated member, a tar that ends without
its end-of-archive blocks (the samples before the damage are still read), a file that is not a
tar at all. Sequential reading (read_shard, the index builder) walks the tar headers; training
reads a sample's members by the byte offsets its length index recorded (read_members), so a rank
touches only the bytes of its own samples.
"""

from __future__ import annotations

import tarfile
from collections import OrderedDict
from typing import Callable, Iterator, Optional

from aria_train.data.multimodal.errors import BadSample, BadSamples
from aria_train.data.multimodal.layouts import (
    IMAGE_EXTENSIONS,
    RawSample,
    ReadError,
    member_type,
    sample_from_members,
    split_member_name,
)

_BLOCK = tarfile.BLOCKSIZE
_TAR_ERRORS = (tarfile.TarError, OSError, EOFError)


def open_tar(path: str, on_damage: Callable[[str], None]) -> Optional[tarfile.TarFile]:
    try:
        return tarfile.open(path, "r:")
    except _TAR_ERRORS as err:
        on_damage(f"not a readable tar: {err}")
        return None


def _end_is_clean(tar: tarfile.TarFile) -> bool:
    """After the last member: is there an end-of-archive (zero) block where the next header
    would start? A truncated tar ends early or in the middle of a header."""
    fileobj = tar.fileobj
    fileobj.seek(tar.offset)
    block = fileobj.read(_BLOCK)
    return len(block) == _BLOCK and block.count(0) == _BLOCK


def tar_groups(tar: tarfile.TarFile, on_damage: Callable[[str], None]) -> Iterator[tuple[str, list]]:
    """(key, [(suffix, TarInfo)]) for each group of consecutive members sharing a key."""
    key, members = None, []
    while True:
        try:
            info = tar.next()
        except _TAR_ERRORS as err:
            if members:
                yield key, members
            on_damage(f"truncated or damaged tar after key {key}: {err}")
            return
        if info is None:
            if members:
                yield key, members
            if not _end_is_clean(tar):
                on_damage(f"truncated tar after key {key}: no end-of-archive blocks")
            return
        tar.members = []  # headers are not kept: a shard can hold millions of members
        if not info.isreg():
            continue
        k, suffix = split_member_name(info.name)
        if k is None:
            continue
        if k != key and members:
            yield key, members
            members = []
        key = k
        members.append((suffix, info))


def wanted(suffix: str) -> bool:
    """Members a sample is made of (layouts.sample_from_members); others are never read."""
    sub, ext = member_type(suffix)
    return ext in ("json", "txt") or ext in IMAGE_EXTENSIONS or (sub.isdigit() and ext.isalnum())


def group_sample(tar: tarfile.TarFile, path: str, key: str, group: list) -> RawSample:
    """Reads a group's members -> RawSample (ReadError for damage, BadSample for its layout)."""
    seen, members = set(), []
    for suffix, info in group:
        if suffix in seen:
            raise ReadError(f"{info.name}: duplicate file name in the sample")
        seen.add(suffix)
        if not wanted(suffix):
            continue
        try:
            data = tar.extractfile(info).read()
        except _TAR_ERRORS as err:
            raise _Truncated(f"{info.name}: {err}")
        if len(data) != info.size:
            raise _Truncated(f"{info.name}: {len(data)} of {info.size} bytes")
        members.append((suffix, data, info.name))
    return sample_from_members(path, key, members)


class _Truncated(ReadError):
    pass


def read_shard(path: str, bad: Optional[BadSamples] = None, start: int = 0) -> Iterator[tuple[int, RawSample]]:
    """Yields (position, sample) for the readable samples of one shard, position counting every
    key group (good or bad) from 0; groups before `start` are skipped reading headers only.
    Unreadable samples and damage are reported to `bad` (default: skip and count)."""
    bad = bad if bad is not None else BadSamples()
    path = str(path)
    damage = lambda reason: bad.report(path, "", reason, kind="bad shard")  # noqa: E731
    tar = open_tar(path, damage)
    if tar is None:
        return
    with tar:
        for position, (key, group) in enumerate(tar_groups(tar, damage)):
            if position < start:
                continue
            try:
                sample = group_sample(tar, path, key, group)
            except _Truncated as err:
                bad.report(path, key, f"truncated member: {err}")
                return
            except BadSample as err:
                bad.report(path, key, str(err))
                continue
            yield position, sample


class MemberReader:
    """Reads members by (offset, size) from a few open shards (the most recently used)."""

    def __init__(self, keep_open: int = 8):
        self.keep_open = keep_open
        self._files: OrderedDict = OrderedDict()

    def read(self, path: str, offset: int, size: int) -> bytes:
        f = self._files.pop(path, None)
        if f is None:
            f = open(path, "rb")
            while len(self._files) >= self.keep_open:
                self._files.popitem(last=False)[1].close()
        self._files[path] = f
        f.seek(offset)
        data = f.read(size)
        if len(data) != size:
            raise BadSample(f"{path}: {len(data)} of {size} bytes at offset {offset} (changed since indexed?)")
        return data

    def close(self) -> None:
        while self._files:
            self._files.popitem()[1].close()

    def __getstate__(self):  # open files do not pickle; a copy opens its own
        return {"keep_open": self.keep_open}

    def __setstate__(self, state):
        self.__init__(state["keep_open"])
