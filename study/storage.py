"""Where studies live: a local directory, or shared storage named by a URI (``s3://``, ``gs://``).

Ray Tune writes trials straight to the storage (`Store.study_path` is its ``storage_path/name``).
The tables and reports are computed on a local copy: for a URI, `Store.pull` mirrors a study
into ``~/.cache/study-platform/studies/`` (checkpoints left out) and `Store.push` uploads what was
written there (spec, results). For a local directory both are no-ops. All remote I/O goes through
``pyarrow.fs`` (the filesystem layer Ray Tune itself uses).

The keys of a remote listing are not trusted: a key that is not a plain relative path below the
study (``..``, absolute, backslashes) or that would land outside the mirror (through a link in it)
refuses the pull in one line; each file is written by an atomic rename (a link in the mirror is
replaced, never written through) and read with a size bound. `push` uploads regular files of the
mirror only, never what a link in it points at.
"""

from __future__ import annotations

import errno
import hashlib
import os
import posixpath
from dataclasses import dataclass
from pathlib import Path

from core.atomic import write_bytes
from core.errors import DiskFull, UserError
from core.layout import RESULTS_DIR, SPEC_FILE
from core.safe_read import SMALL_LIMIT, STATE_LIMIT, UnsafeFile, confined, notice, read_bounded, safe_relpath

CACHE = Path(os.environ.get("STUDY_CACHE", "~/.cache/study-platform/studies")).expanduser()


def is_uri(storage: str) -> bool:
    return "://" in storage


@dataclass(frozen=True)
class Store:
    """A storage root. `root` is an absolute local path or a URI."""

    root: str

    @classmethod
    def open(cls, storage: str | Path, *, create: bool = False) -> Store:
        """Resolve (and with `create`, check that it can be written) a storage root; errors are one line."""
        storage = str(storage)
        if not is_uri(storage):
            path = Path(storage).expanduser().resolve()
            if create:
                try:
                    path.mkdir(parents=True, exist_ok=True)
                    probe = path / f".write-check-{os.getpid()}"
                    probe.write_text("ok")
                    probe.unlink()
                except OSError as e:
                    if e.errno in (errno.ENOSPC, errno.EDQUOT):
                        (path / f".write-check-{os.getpid()}").unlink(missing_ok=True)
                        raise DiskFull(
                            f"--storage {storage}: no space left on device; free some space, then run the same "
                            "command again"
                        ) from None
                    raise UserError(f"--storage {storage}: directory cannot be written ({e.strerror or e})") from None
            return cls(str(path))
        store = cls(storage.rstrip("/"))
        if create:
            try:
                fs, base = store._fs()
                fs.create_dir(base, recursive=True)
                probe = f"{base}/.write-check-{os.getpid()}"
                with fs.open_output_stream(probe) as f:
                    f.write(b"ok")
                fs.delete_file(probe)
            except Exception as e:  # noqa: BLE001 - pyarrow raises OSError, ArrowInvalid, ... per backend
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise UserError(f"--storage {storage}: storage cannot be written ({first})") from None
        return store

    @property
    def remote(self) -> bool:
        return is_uri(self.root)

    def _fs(self):
        import pyarrow.fs

        try:
            return pyarrow.fs.FileSystem.from_uri(self.root)
        except Exception as e:  # noqa: BLE001
            raise UserError(f"--storage {self.root}: not a storage URI pyarrow can open ({e})") from None

    def fs_path(self, name: str):
        """(pyarrow filesystem, path) of a study, local or remote."""
        import pyarrow.fs

        if not self.remote:
            return pyarrow.fs.LocalFileSystem(), self.study_path(name)
        fs, base = self._fs()
        return fs, f"{base}/{name}"

    def study_path(self, name: str) -> str:
        """Path or URI of a study, as Ray Tune sees it."""
        return f"{self.root}/{name}"

    def local_dir(self, name: str) -> Path:
        """The directory where the study's tables are computed (the study itself when local)."""
        if not self.remote:
            return Path(self.root) / name
        key = hashlib.sha1(self.root.encode()).hexdigest()[:10]
        return CACHE / key / name

    def names(self) -> list[str]:
        """Studies (directories with a spec.yaml) under this root."""
        if not self.remote:
            return sorted(p.parent.name for p in Path(self.root).glob(f"*/{SPEC_FILE}"))
        import pyarrow.fs

        fs, base = self._fs()
        infos = fs.get_file_info(pyarrow.fs.FileSelector(base, allow_not_found=True))
        dirs = [i.base_name for i in infos if i.type == pyarrow.fs.FileType.Directory and _plain_name(i.base_name)]
        return sorted(d for d in dirs if fs.get_file_info(f"{base}/{d}/{SPEC_FILE}").type == pyarrow.fs.FileType.File)

    def pull(self, name: str) -> Path:
        """Mirror a remote study locally (no checkpoints); returns `local_dir(name)`. `UserError`
        (one line) for a key of the listing that would be written outside the mirror."""
        local = self.local_dir(name)
        if not self.remote:
            return local
        import pyarrow.fs

        if not _plain_name(name):
            raise UserError(f"{self.root}: study name {name!r} is not a plain directory name: refused")
        fs, base = self._fs()
        src = f"{base}/{name}"
        files = []  # every key is checked before anything is written
        for info in fs.get_file_info(pyarrow.fs.FileSelector(src, recursive=True, allow_not_found=True)):
            if info.type != pyarrow.fs.FileType.File:
                continue
            rel = info.path[len(src) + 1 :] if info.path.startswith(f"{src}/") else None
            # the directories on the way must stay in the mirror; a link at the file's own name is replaced
            parent = confined(local, posixpath.dirname(rel) or ".") if rel is not None and safe_relpath(rel) else None
            if parent is None:
                raise UserError(
                    f"{self.study_path(name)}: the storage lists a file {info.path!r} that would be written outside "
                    f"the local mirror {local}: refused (nothing of the study is mirrored)"
                )
            if "checkpoint_" not in rel and not rel.startswith(f"{RESULTS_DIR}/"):
                files.append((info, rel))
        for info, rel in files:
            if info.size is not None and info.size > STATE_LIMIT:
                notice(f"{self.study_path(name)}/{rel}: {info.size:,} bytes, more than {STATE_LIMIT:,}: not mirrored")
                continue
            with fs.open_input_stream(info.path) as f:
                data = f.read(STATE_LIMIT + 1)
            if len(data) > STATE_LIMIT:
                notice(f"{self.study_path(name)}/{rel}: more than {STATE_LIMIT:,} bytes: not mirrored")
                continue
            write_bytes(data, local / rel)  # an atomic rename: a link at that name is replaced, not followed
        return local

    def push(self, name: str, *relpaths: str) -> None:
        """Upload files or directories (relative to the study) from the local mirror."""
        if not self.remote:
            return
        fs, base = self._fs()
        local = self.local_dir(name)
        for rel in relpaths:
            src = local / rel
            if src.is_symlink() or confined(local, rel) is None:
                notice(f"{src}: a link: not uploaded")
                continue
            files = [src] if src.is_file() else sorted(p for p in src.rglob("*") if p.is_file())
            for f in files:
                if f.is_symlink() or confined(local, f.relative_to(local)) is None:
                    notice(f"{f}: a link: not uploaded")  # what a link in the mirror points at never leaves
                    continue
                target = f"{base}/{name}/{f.relative_to(local).as_posix()}"
                fs.create_dir(target.rsplit("/", 1)[0], recursive=True)
                with fs.open_output_stream(target) as out:
                    out.write(f.read_bytes())

    def read_text(self, name: str, rel: str) -> str | None:
        """A small file of a study, or None when it does not exist."""
        if not self.remote:
            p = Path(self.root) / name / rel
            try:
                return read_bounded(p, SMALL_LIMIT).decode("utf-8", errors="replace") if p.exists() else None
            except UnsafeFile as e:
                raise UserError(str(e)) from None
        import pyarrow.fs

        fs, base = self._fs()
        path = f"{base}/{name}/{rel}"
        if fs.get_file_info(path).type != pyarrow.fs.FileType.File:
            return None
        with fs.open_input_stream(path) as f:
            data = f.read(SMALL_LIMIT + 1)
        if len(data) > SMALL_LIMIT:
            raise UserError(f"{self.study_path(name)}/{rel}: more than {SMALL_LIMIT:,} bytes: not read")
        return data.decode("utf-8", errors="replace")


def _plain_name(name: str) -> bool:
    """A study name usable as one directory of the mirror (no separators, not ``.`` or ``..``)."""
    return safe_relpath(name) and "/" not in name
