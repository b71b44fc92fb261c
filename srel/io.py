"""File I/O shared by every experiment: repository paths, atomic writes, checked reads.

Every output is written to a temporary file `.<name>.<host>-<pid>.<random>.tmp` in the destination
folder, flushed to disk and then renamed over the target (`os.replace` is atomic on POSIX), so a
reader never sees a half-written file and a good file is never replaced by a broken one. A process
killed mid-write leaves only its temporary file; the next write to that folder removes it.
"""
import os
import pickle
import re
import socket
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

# NOTE: os.umask can only be read by setting it; done once at import, before any threads write.
_UMASK = os.umask(0o022)
os.umask(_UMASK)
_TMP_NAME = re.compile(r"\.(?P<name>.+)\.(?P<host>\w+)-(?P<pid>\d+)\.\w+\.tmp")


class ResultFileError(RuntimeError):
    """A result, checkpoint or data file exists but cannot be read back."""


def resolve_path(path) -> Path:
    """Absolute paths stay; relative ones are taken relative to the repository root.

    Notebooks run from the repository root, from Scripts/ or from papermill's cwd; resolving
    against the repository keeps `Assets/` and `Plots/` in one place whichever it is.
    """
    path = Path(path).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path


def _host() -> str:
    return re.sub(r"\W", "_", socket.gethostname()) or "host"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: existence check only
    except ProcessLookupError:
        return False
    except OSError:  # e.g. PermissionError: it exists but belongs to someone else
        return True
    return True


def remove_orphaned_temporaries(folder) -> list:
    """Delete temporary files left in `folder` by writers on this host that no longer run.

    Temporaries of live processes (another write in progress) and of other hosts (a shared
    network folder) are kept. Returns the paths removed.
    """
    # NOTE: POSIX only - on Windows os.kill(pid, 0) would send CTRL_C_EVENT, not test existence.
    if os.name != "posix":
        return []
    host, own, removed = _host(), os.getpid(), []
    for path in Path(folder).glob(".*.tmp"):
        match = _TMP_NAME.fullmatch(path.name)
        if not match or match["host"] != host:
            continue
        pid = int(match["pid"])
        if pid != own and not _pid_alive(pid):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def atomic_write(path, write) -> Path:
    """Call `write(file)` on a temporary file beside `path`, fsync it, then rename it to `path`.

    The file gets the permissions a plain `open` would give (0o666 less the umask), not the
    0o600 of `tempfile.mkstemp`. Returns the absolute path written.
    """
    path = resolve_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_orphaned_temporaries(path.parent)
    fd, tmp = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.{_host()}-{os.getpid()}.", suffix=".tmp"
    )
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_UMASK)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    _fsync_folder(path.parent)
    return path


def _fsync_folder(folder: Path) -> None:
    """Make the rename itself durable (survives a power cut, not only a killed process)."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a folder; the rename still happened
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write `data` to `path` atomically (temporary file in the same folder, fsync, rename)."""
    return atomic_write(path, lambda f: f.write(data))


def save_pickle(obj, path) -> Path:
    """Pickle `obj` to `path` atomically; returns the absolute path written."""
    return atomic_write_bytes(path, pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL))


def load_pickle(path):
    """Load a pickle, turning a missing, truncated or corrupted file into one clear error."""
    path = resolve_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file. Run the notebook that writes it first.")
    try:
        with open(path, "rb") as f:
            return pickle.load(f)
    except Exception as exc:  # pickle raises many types on bad bytes
        raise ResultFileError(
            f"{path} is truncated or corrupted and cannot be unpickled "
            f"({type(exc).__name__}: {exc}). Delete it and rerun the notebook that writes it."
        ) from None


def save_figure(fig, path, dpi: int = 120) -> Path:
    """Save a matplotlib figure atomically (format from the suffix, e.g. .png or .pdf)."""
    import io

    path = resolve_path(path)
    buf = io.BytesIO()
    fig.savefig(buf, format=path.suffix.lstrip(".") or "png", dpi=dpi, bbox_inches="tight")
    return atomic_write_bytes(path, buf.getvalue())
