"""The scan's walk: several roots merged into one sorted tree of paths relative to the index,
streamed (memory does not grow with the number of files), every entry it cannot use recorded
with a reason (broken links and loops, FIFOs, sockets, devices, denied entries, bad names)."""

from __future__ import annotations

import errno
import os
import stat
from typing import Any, Iterator, NamedTuple, Sequence

IMAGE_EXTENSIONS = frozenset(
    "jpg jpeg jpe jfif png apng gif webp bmp dib tif tiff avif".split()
)

_SPECIAL_FILES = ((stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISSOCK, "a socket"),
                  (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _os_reason(err: OSError) -> str:
    """Why the walk cannot tell what an entry is, in words."""
    if err.errno == errno.ELOOP:
        return "symbolic link loop (too many levels of symbolic links)"
    return f"cannot read its file type: {err.strerror or err}"


class Entry(NamedTuple):
    rel: str  # relative to the index's folder, "/"-separated: the stored path and sort key
    path: str  # as given to the OS
    status: str | None  # known without probing (bad name, broken link)
    reason: str | None


def _stored_name(name: str) -> tuple[str, bool]:
    """A name Parquet can hold (UTF-8); undecodable bytes are escaped and flagged."""
    try:
        name.encode("utf-8")
        return name, True
    except UnicodeEncodeError:
        return os.fsencode(name).decode("utf-8", "backslashreplace"), False


def sort_key(rel: str) -> list[str]:
    """Sort key of the walk and of the index: path components, so that a folder's files stay together."""
    return rel.split("/")


class Walk:
    """Sorted, streaming walk of several roots, merged into one tree of paths relative to the index."""

    def __init__(self, roots: Sequence[str], index_dir: str, all_files: bool, skip: set[str]):
        self.all_files, self.skip, self.index_dir = all_files, skip, index_dir
        self.ignored, self.unreadable_folders = 0, []
        self.tree: dict[Any, Any] = {}  # component -> subtree; key None marks a root
        for root in roots:
            node = self.tree
            rel = os.path.relpath(root, index_dir).replace(os.sep, "/")
            for part in [] if rel == "." else rel.split("/"):
                node = node.setdefault(part, {})
            node[None] = True

    def __iter__(self) -> Iterator[Entry]:
        return self._visit(self.index_dir, "", self.tree, True)

    def _visit(self, folder: str, prefix: str, virtual: dict, name_ok: bool) -> Iterator[Entry]:
        items: list[tuple[str, bool, Any]] = [(name, True, sub) for name, sub in virtual.items() if name is not None]
        if virtual.get(None):
            try:
                with os.scandir(folder) as it:
                    items += [(*_stored_name(e.name), e) for e in it]
            except OSError as err:
                self.unreadable_folders.append((prefix or "./", err.strerror or str(err)))
        items.sort(key=lambda item: item[0])
        for name, ok, item in items:
            rel, good = prefix + name, name_ok and ok
            if isinstance(item, dict):  # a root or a folder on the way to one
                path = os.path.join(folder, name)
                if item.get(None) and not os.path.isdir(path):
                    yield self._entry(rel, path, good)  # a file named on the command line: any extension
                else:
                    yield from self._visit(path, rel + "/", item, good)
                continue
            try:
                is_folder = item.is_dir(follow_symlinks=False)
            except OSError as err:  # no type in the listing, and lstat refused
                yield Entry(rel, item.path, "unreadable", _os_reason(err))
                continue
            if is_folder:
                yield from self._visit(item.path, rel + "/", {None: True}, good)
            elif not self.all_files and name[name.rfind(".") + 1 :].lower() not in IMAGE_EXTENSIONS:
                self.ignored += 1
            elif item.path not in self.skip:
                entry = self._listed(rel, item, good)
                if entry is None:  # a link to a folder: not followed
                    self.ignored += 1
                else:
                    yield entry

    @classmethod
    def _listed(cls, rel: str, item: os.DirEntry, name_ok: bool) -> Entry | None:
        """A listed entry that is not a folder: a file to probe, a problem known from its type, or
        None for a link to a folder. Never raises: a bad entry must not stop the walk."""
        try:
            if item.is_file():  # file type from the folder listing: no stat here (workers stat)
                return cls._entry(rel, item.path, name_ok)
            if item.is_dir():
                return None
            mode = item.stat().st_mode  # follows links: a link to a FIFO is a FIFO
        except FileNotFoundError:
            return Entry(rel, item.path, "unreadable", "broken symbolic link" if item.is_symlink() else "the file vanished during the scan")
        except OSError as err:  # a link loop, a link into a folder we may not search
            return Entry(rel, item.path, "unreadable", _os_reason(err))
        kind = next((name for test, name in _SPECIAL_FILES if test(mode)), f"file type {stat.S_IFMT(mode):#o}")
        return Entry(rel, item.path, "unreadable", f"{kind}, not a regular file")

    @staticmethod
    def _entry(rel: str, path: str, name_ok: bool) -> Entry:
        if name_ok:
            return Entry(rel, path, None, None)
        return Entry(rel, path, "unreadable", "file name is not valid UTF-8: rename it")
