"""File I/O shared by every experiment: repository paths, atomic writes, checked reads.

Every output is written to a temporary file in the destination folder, flushed to disk and then
renamed over the target (`os.replace` is atomic on POSIX), so a reader never sees a half-written
file and a good file is never replaced by a broken one.
"""
import os
import pickle
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


class ResultFileError(RuntimeError):
    """A result, checkpoint or data file exists but cannot be read back."""


def resolve_path(path) -> Path:
    """Absolute paths stay; relative ones are taken relative to the repository root.

    Notebooks run from the repository root, from Scripts/ or from papermill's cwd; resolving
    against the repository keeps `Assets/` and `Plots/` in one place whichever it is.
    """
    path = Path(path).expanduser()
    return path if path.is_absolute() else REPO_ROOT / path


def atomic_write_bytes(path, data: bytes) -> Path:
    """Write `data` to `path` atomically (temporary file in the same folder, fsync, rename)."""
    path = resolve_path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


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
