"""Output paths that never lose a user's data.

The rules every writer in lowlight follows (`lowlight-compile --out`,
`lowlight-run --output`, `zoo train --out`):

- An output path is replaced only if it is absent, an empty folder, or
  something this tool made (a folder carrying our marker file, e.g. a bundle's
  `manifest.json`). Anything else is refused with an OutputError before any
  work starts; `overwrite=True` (a CLI's `--overwrite`) is the user's explicit
  permission where that makes sense.
- An output equal to or inside one of the inputs is always refused.
- The parent must be writable: checked up front by creating a probe file.
- Work happens in a sibling `.NAME.partial-PID-XXXX` folder created with the
  user's umask (tempfile's 0700 would hide a bundle from a deployment service
  account) and is renamed into place only when complete; the previous output
  survives until then.
- `OutputLock` makes a second writer to the same path fail at once, naming
  the process that holds it. Leftovers of killed runs (`.NAME.partial-PID-*`
  whose PID is gone, `.NAME.old-*`) are removed by the next run on that path.
"""
from __future__ import annotations

import errno
import json
import os
import re
import shutil
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator, Sequence

from lowlight.core.errors import OutputError

_PARTIAL = ".partial-"
_OLD = ".old-"


def current_umask() -> int:
    """The process umask (read without changing it where /proc allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def make_dir(path: Path) -> Path:
    """Create `path` (and parents) with the user's normal umask, as `mkdir -p` would."""
    path.mkdir(parents=True, exist_ok=True)
    return path


def partial_dir(out: Path) -> Path:
    """A fresh sibling `.NAME.partial-PID-XXXX` folder, mode 0777 & ~umask (not tempfile's 0700)."""
    tmp = out.parent / f".{out.name}{_PARTIAL}{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(mode=0o777)  # mkdir applies the umask, unlike tempfile.mkdtemp
    return tmp


def partial_file(out: Path) -> Path:
    """A sibling `.NAME.partial-PID-XXXX.SUFFIX` path for a file written then renamed into place."""
    return out.parent / f".{out.name}{_PARTIAL}{os.getpid()}-{uuid.uuid4().hex[:8]}{out.suffix}"


@contextmanager
def staged_file(out: Path) -> Iterator[Path]:
    """Yield a partial path beside `out` to write; on success it gets the user's umask and is renamed
    onto `out` (claimed by the caller beforehand), on failure the partial is removed. No half file ever
    stands under the final name."""
    tmp = partial_file(out)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~current_umask())  # writers like safetensors create 0600
        tmp.replace(out)
    finally:
        if tmp.exists():
            tmp.unlink()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True


def _leftover(name: str, prefix: str) -> tuple[str, int] | None:
    """("partial"|"old", PID) if `name` is exactly a leftover name this module makes for `prefix`, else None.

    The whole name must match `.PREFIX.partial-PID-XXXXXXXX[.SUFFIX]` or `.PREFIX.old-PID-XXXXXXXX`
    (8 hex digits): a user's `.PREFIX.old-backup` is never taken for ours.
    """
    m = _LEFTOVER.fullmatch(name)
    if m is None or m.group("prefix") != prefix:
        return None
    return m.group("kind"), int(m.group("pid"))


_LEFTOVER = re.compile(r"\.(?P<prefix>.+)\.(?P<kind>partial|old)-(?P<pid>\d+)-[0-9a-f]{8}(?:\.[A-Za-z0-9]+)?")


def _remove(p: Path, removed: list[Path]) -> None:
    try:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
        removed.append(p)
    except OSError:
        pass


def remove_stale(out: Path) -> list[Path]:
    """Remove leftovers of killed runs on `out`: partial folders/files of dead PIDs, old copies.

    Only names this module generates are touched (`_leftover`); partials only when
    the PID that made them is gone. Call it while holding `OutputLock(out)`: an old
    copy exists only between the two renames of `commit_dir`, under that lock.
    """
    removed: list[Path] = []
    if not out.parent.is_dir():
        return removed
    for p in out.parent.glob(f".{out.name}.*"):
        hit = _leftover(p.name, out.name)
        if hit is not None and (hit[0] == "old" or not _pid_alive(hit[1])):
            _remove(p, removed)
    return removed


def remove_stale_partials(folder: Path) -> list[Path]:
    """Remove every partial leftover in `folder` whose PID is gone (a folder only this tool writes, e.g. the cache)."""
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for p in folder.glob(f".*{_PARTIAL}*"):
        m = _LEFTOVER.fullmatch(p.name)
        if m is not None and m.group("kind") == "partial" and not _pid_alive(int(m.group("pid"))):
            _remove(p, removed)
    return removed


def _within(child: Path, parent: Path) -> bool:
    try:
        child.relative_to(parent)
        return True
    except ValueError:
        return False


def check_not_input(out: Path, inputs: Sequence[str | Path | None], flag: str) -> None:
    """Refuse an output that is one of the inputs, lies inside one, or contains one."""
    o = out.resolve()
    for src in inputs:
        if src is None:
            continue
        s = Path(src).resolve()
        if o == s or _within(o, s) or (s.exists() and o.is_dir() and _within(s, o)):
            relation = "is" if o == s else ("is inside" if _within(o, s) else "contains")
            raise OutputError(
                f"{flag} {out} {relation} the input {src}: writing there would destroy the input",
                f"choose an {flag} outside {src}",
            )


def check_writable(path: Path, flag: str) -> None:
    """Prove the nearest existing ancestor of `path` accepts new files (a probe file, removed at once)."""
    anc = path.parent
    while not anc.exists():
        if anc.parent == anc:
            break
        anc = anc.parent
    if anc.exists() and not anc.is_dir():
        raise OutputError(f"{flag} {path} lies under {anc}, which is a file, not a folder", f"choose an {flag} whose parent is a folder")
    probe = anc / f".lowlight-probe-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise OutputError(
            f"cannot write {flag} {path}: {anc} is not writable ({exc.strerror or exc})",
            f"choose an {flag} in a folder you can write to, or fix its permissions",
        ) from exc


def claim_dir(
    out: Path, marker: str, what: str, flag: str, *, overwrite: bool = False, inputs: Sequence[str | Path | None] = ()
) -> None:
    """Check that folder `out` may be (re)written; raise OutputError before any work otherwise.

    Allowed: absent, an empty folder, or a folder containing `marker` (made by
    this tool). `overwrite=True` also allows any other folder, never a file.
    """
    check_not_input(out, inputs, flag)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        kind = "a link" if out.is_symlink() else "a file"
        raise OutputError(f"{flag} {out} is {kind}, not {what}", f"choose a new path for {flag} (it must be a folder this tool creates)")
    if out.is_dir():
        try:
            entries = list(out.iterdir())
        except OSError as exc:
            raise OutputError(f"cannot read {flag} {out} ({exc.strerror or exc})", f"choose another {flag}") from exc
        if entries and not (out / marker).is_file() and not overwrite:
            shown = ", ".join(sorted(e.name for e in entries)[:5]) + (", ..." if len(entries) > 5 else "")
            raise OutputError(
                f"{flag} {out} already exists and is not {what} ({len(entries)} entries: {shown}); refusing to replace it",
                f"choose a new or empty folder for {flag}" + (", or pass --overwrite to replace it" if marker != "manifest.json" else ""),
            )
    check_writable(out, flag)


def claim_file(out: Path, what: str, flag: str, *, overwrite: bool = False, inputs: Sequence[str | Path | None] = ()) -> None:
    """Check that file `out` may be written: absent, or present with `overwrite=True`; never a folder or an input."""
    check_not_input(out, inputs, flag)
    if out.is_dir():
        raise OutputError(f"{flag} {out} is an existing folder, not {what}", f"choose a file path for {flag}, e.g. {out / ('enhanced' + out.suffix if out.suffix else 'enhanced.mp4')}")
    if out.exists() and not overwrite:
        raise OutputError(f"{flag} {out} already exists; refusing to overwrite it", f"choose a new file name, or pass --overwrite to replace it")
    check_writable(out, flag)


def claim_weights(out: Path, overwrite: bool = False, init: str | Path | None = None) -> None:
    """Check that a trainer may write weights `out` and the record it writes beside them (`NAME.json`):
    absent, or present with `overwrite`; never the weights (or record) it starts from, `init`."""
    init_record = Path(init).with_suffix(".json") if init else None
    claim_file(out, "a weights file", "--out", overwrite=overwrite, inputs=[init])
    claim_file(out.with_suffix(".json"), "the training record written beside the weights", "--out", overwrite=overwrite,
               inputs=[init, init_record])


class OutputLock:
    """An exclusive advisory lock on an output path (`.NAME.lock` beside it).

    A second writer fails at once with an OutputError naming the holder's PID
    and command. The lock dies with its process (flock), so a killed run never
    blocks the next one. Where flock is unavailable the lock is advisory by
    file existence only.
    """

    def __init__(self, out: Path, flag: str = "--out") -> None:
        self.out, self.flag = Path(out), flag
        self.path = self.out.parent / f".{self.out.name}.lock"
        self._fh: IO[str] | None = None

    def __enter__(self) -> "OutputLock":
        make_dir(self.out.parent)
        if self.path.is_symlink() or (self.path.exists() and not self._ours()):
            raise OutputError(
                f"{self.path} exists and is not a lock this tool wrote; refusing to touch it",
                f"move that file away, or choose another {self.flag}",
            )
        fh = open(self.path, "a+")
        try:
            import fcntl

            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover - non-POSIX
            pass
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                fh.close()
                raise
            fh.seek(0)
            holder = fh.read().strip()
            fh.close()
            try:
                info = json.loads(holder)
                who = f"process {info.get('pid')} ({info.get('cmd', '?')}, since {info.get('since', '?')})"
            except ValueError:
                who = "another process"
            raise OutputError(
                f"{self.flag} {self.out} is being written by {who}",
                f"wait for it to finish, or choose another {self.flag}",
            ) from None
        fh.seek(0)
        fh.truncate()
        import sys

        fh.write(json.dumps({"pid": os.getpid(), "cmd": " ".join(sys.argv[:1] + sys.argv[1:6]), "since": time.strftime("%Y-%m-%d %H:%M:%S")}))
        fh.flush()
        self._fh = fh
        return self

    def _ours(self) -> bool:
        """An existing lock file is ours if empty (just created by a racing run) or our JSON with a PID."""
        try:
            text = self.path.read_text()
        except (OSError, UnicodeDecodeError):
            return False
        if not text.strip():
            return True
        try:
            info = json.loads(text)
        except ValueError:
            return False
        return isinstance(info, dict) and "pid" in info

    def __exit__(self, *exc: Any) -> None:
        if self._fh is not None:
            try:
                self.path.unlink()
            except OSError:
                pass
            self._fh.close()  # closing releases the flock
            self._fh = None


@contextmanager
def staged_dir(out: Path) -> Iterator[Path]:
    """Yield a partial folder beside `out`; `commit_dir` it into place, else it is removed on exit."""
    tmp = partial_dir(out)
    try:
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def commit_dir(tmp: Path, out: Path) -> None:
    """Move the finished folder `tmp` to `out`, replacing a previous output (already claimed) last.

    The old output is renamed aside first and removed only after the new one
    is in place, so at every instant one complete output exists at `out` or
    beside it.
    """
    old = None
    if out.is_dir():
        old = out.parent / f".{out.name}{_OLD}{os.getpid()}-{uuid.uuid4().hex[:8]}"
        out.rename(old)
    try:
        tmp.rename(out)
    except OSError:
        if old is not None:
            old.rename(out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
