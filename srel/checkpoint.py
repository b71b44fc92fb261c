"""Per-epoch checkpoints so a killed run resumes where it stopped and loses no finished work.

A checkpoint holds the loop position (run, epoch), every finished run's history, the current
run's history, model and optimizer state, and the parameters it was made with. Files are
written atomically and the previous one is kept, so a checkpoint corrupted on disk is set aside
and the run restarts from the one before it.
"""
import io
import re
import warnings
from pathlib import Path

import torch

from .io import atomic_write_bytes, resolve_path

FORMAT = 1
KEEP = 2  # checkpoints kept on disk: the newest and one to fall back on


def checkpoint_dir(root, dataset: str, definitions) -> Path:
    """`<root>/<dataset>_<definition>[_<definition>...]`, e.g. Checkpoints/cifar10_kl."""
    definitions = [definitions] if isinstance(definitions, str) else list(definitions)
    return resolve_path(root) / "_".join([dataset, *definitions])


class CheckpointStore:
    """Checkpoints of one experiment (one parameter set) in one folder."""

    def __init__(self, folder, params: dict):
        self.folder = resolve_path(folder)
        self.params = params

    def _files(self) -> list:
        """Checkpoint files, newest first."""
        found = []
        for path in self.folder.glob("checkpoint-*.pt"):
            match = re.fullmatch(r"checkpoint-(\d+)\.pt", path.name)
            if match:
                found.append((int(match.group(1)), path))
        return [p for _, p in sorted(found, reverse=True)]

    def save(self, state: dict, extra: dict) -> Path:
        """Write a new checkpoint atomically, then drop all but the newest KEEP."""
        files = self._files()
        number = int(files[0].stem.split("-")[1]) + 1 if files else 1
        buf = io.BytesIO()
        torch.save({"format": FORMAT, "params": self.params, "state": state, "extra": extra}, buf)
        path = atomic_write_bytes(self.folder / f"checkpoint-{number:05d}.pt", buf.getvalue())
        for old in self._files()[KEEP:]:
            old.unlink(missing_ok=True)
        return path

    def load(self, verbose: bool = True):
        """The newest readable checkpoint's state with the same parameters, or None.

        A corrupted file is renamed to `*.corrupt` with a warning and the previous one tried.
        Checkpoints made with other parameters are renamed to `*.stale` (kept, never resumed).
        """
        for path in self._files():
            try:
                payload = torch.load(path, map_location="cpu", weights_only=False)
                if not isinstance(payload, dict) or payload.get("format") != FORMAT:
                    raise ValueError("not a checkpoint of this format")
            except Exception as exc:
                bad = path.with_suffix(".pt.corrupt")
                path.replace(bad)
                warnings.warn(
                    f"Checkpoint {path} is corrupted or truncated ({type(exc).__name__}); "
                    f"set aside as {bad.name}; falling back to the previous checkpoint.",
                    stacklevel=2,
                )
                continue
            if payload["params"] != self.params:
                changed = _describe_changes(payload["params"], self.params)
                for stale in self._files():
                    stale.replace(stale.with_suffix(".pt.stale"))
                if verbose:
                    print(f"Parameters differ from the checkpoint in {self.folder} ({changed}): starting fresh.")
                return None
            state = payload["state"]
            if state["current"] is not None:
                state["current"].update(payload["extra"])
            if verbose:
                runs = self.params.get("runs", "?")
                epochs = self.params.get("epochs", "?")
                if state["current"] is None and state["run"] >= runs:
                    where = "all runs finished"
                else:
                    where = f"run {state['run'] + 1}/{runs}, epoch {state['epoch'] + 1}/{epochs}"
                print(f"Resuming from {path} ({where}).")
            return state
        return None


def _describe_changes(old: dict, new: dict) -> str:
    keys = sorted(set(old) | set(new))
    parts = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
    return ", ".join(parts) or "format changed"
