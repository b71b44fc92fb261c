"""Per-epoch checkpoints so a killed run resumes where it stopped and loses no finished work.

A checkpoint holds the loop position (run, epoch), every finished run's history, the current
run's history (S_rel and metrics so far), model and optimizer state, the random number generator
states and the parameters it was made with. Files are written atomically and the previous one is
kept, so a checkpoint corrupted on disk is set aside and the run restarts from the one before it.
Checkpoints of another parameter set are set aside as `*.<params-tag>.stale`, and revived when
that parameter set is run again in the same folder.

The random number generator states are saved but not restored: the training loop re-seeds every
run and epoch from (seed, run, epoch), so an epoch replays identically whatever the generators
held before; the saved states are there to inspect.
"""
import hashlib
import json
import random
import re
import warnings
from pathlib import Path

import numpy as np
import torch

from .io import atomic_write, resolve_path

FORMAT = 1
KEEP = 2  # checkpoints kept on disk: the newest and one to fall back on
_NAME = re.compile(r"checkpoint-(\d+)\.pt")


def checkpoint_dir(root, dataset: str, definitions) -> Path:
    """`<root>/<dataset>_<definition>[_<definition>...]`, e.g. Checkpoints/cifar10_kl."""
    definitions = [definitions] if isinstance(definitions, str) else list(definitions)
    return resolve_path(root) / "_".join([dataset, *definitions])


def params_tag(params: dict) -> str:
    """A short fingerprint of a parameter set (names the stale checkpoints made with it)."""
    text = json.dumps(params, sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def rng_states() -> dict:
    """The global generators' states (torch CPU, CUDA when initialised, numpy, random)."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else [],
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }


class CheckpointStore:
    """Checkpoints of one experiment (one parameter set) in one folder."""

    def __init__(self, folder, params: dict):
        self.folder = resolve_path(folder)
        # a file in the way would only fail at the first save, after a whole epoch of training
        existing = next(f for f in (self.folder, *self.folder.parents) if f.exists())
        if not existing.is_dir():
            raise NotADirectoryError(
                f"checkpoint folder {self.folder} cannot be made: {existing} is a file. Pass "
                f"another checkpoint_dir, or None to turn checkpoints off."
            )
        self.params = params
        self.tag = params_tag(params)

    def _files(self) -> list:
        """Checkpoint files, newest first."""
        found = []
        for path in self.folder.glob("checkpoint-*.pt"):
            match = _NAME.fullmatch(path.name)
            if match:
                found.append((int(match.group(1)), path))
        return [p for _, p in sorted(found, reverse=True)]

    def save(self, state: dict, extra: dict) -> Path:
        """Write a new checkpoint atomically, then drop all but the newest KEEP.

        Args:
            state: {"run", "epoch", "runs", "current"}: the next (run, epoch) to train, the
                finished runs' histories and the current run's history (None between runs).
            extra: merged into `state["current"]` on load: model and optimizer state dicts.
        """
        files = self._files()
        number = int(_NAME.fullmatch(files[0].name).group(1)) + 1 if files else 1
        payload = {
            "format": FORMAT,
            "params": self.params,
            "state": state,
            "extra": extra,
            "rng": rng_states(),
        }
        # torch.save streams into the temporary file: no second in-memory copy of the model
        path = atomic_write(
            self.folder / f"checkpoint-{number:05d}.pt", lambda f: torch.save(payload, f)
        )
        for old in self._files()[KEEP:]:
            old.unlink(missing_ok=True)
        return path

    def load(self, verbose: bool = True):
        """The newest readable checkpoint's state with the same parameters, or None.

        A corrupted file is renamed to `*.corrupt` with a warning naming it, and the previous
        one tried. Checkpoints made with other parameters are renamed to `*.<tag>.stale`; stale
        checkpoints of the current parameters are revived. Prints one line saying whether it
        resumes (from which file and where) or starts fresh (and why).
        """
        state, path, changed, n_bad = self._load_newest()
        revived = []
        if changed:
            suffix = f".{self.tag}.stale"
            for stale in self.folder.glob(f"checkpoint-*.pt{suffix}"):
                revived.append(stale.replace(stale.with_name(stale.name[: -len(suffix)])))
        if revived:
            state, path, _, more_bad = self._load_newest()
            n_bad += more_bad
        if verbose:
            if state is not None and changed:
                print(f"Resuming from {path} ({self._position(state)}), made earlier with these "
                      f"parameters; the newer checkpoints ({changed}) are set aside as stale.")
            elif state is not None:
                print(f"Resuming from {path} ({self._position(state)}).")
            elif changed:
                print(f"Parameters differ from the checkpoint in {self.folder} ({changed}): "
                      "starting fresh.")
            elif n_bad:
                print(f"No readable checkpoint left in {self.folder}: starting fresh.")
        return state

    def _load_newest(self) -> tuple:
        """(state, path, changes, n_corrupt) from the newest readable checkpoint.

        state and path are None when no checkpoint is usable; changes describes how the newest
        readable checkpoint's parameters differ (all checkpoints are then set aside as stale).
        """
        n_bad = 0
        for path in self._files():
            try:
                payload = torch.load(path, map_location="cpu", weights_only=False)
                _check_payload(payload)
            except Exception as exc:  # torch.load and unpickling raise many types on bad bytes
                bad = path.replace(path.with_name(path.name + ".corrupt"))
                n_bad += 1
                warnings.warn(
                    f"Checkpoint {path} is corrupted or truncated ({type(exc).__name__}: {exc}); "
                    f"set aside as {bad.name}; trying the previous checkpoint.",
                    stacklevel=3,
                )
                continue
            if payload["params"] != self.params:
                tag = params_tag(payload["params"])
                for stale in self._files():
                    stale.replace(stale.with_name(f"{stale.name}.{tag}.stale"))
                return None, None, _describe_changes(payload["params"], self.params), n_bad
            state = payload["state"]
            if state["current"] is not None:
                state["current"].update(payload["extra"])
            return state, path, None, n_bad
        return None, None, None, n_bad

    def _position(self, state: dict) -> str:
        runs = self.params.get("runs", "?")
        epochs = self.params.get("epochs", "?")
        if state["current"] is None and state["run"] >= runs:
            return "all runs finished"
        return f"run {state['run'] + 1}/{runs}, epoch {state['epoch'] + 1}/{epochs}"


def _check_payload(payload) -> None:
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"not a checkpoint of format {FORMAT}")
    state = payload.get("state")
    if not isinstance(payload.get("params"), dict) or not isinstance(state, dict):
        raise ValueError("parameters or state missing")
    missing = {"run", "epoch", "runs", "current"} - set(state)
    if missing or (state["current"] is not None and not isinstance(payload.get("extra"), dict)):
        raise ValueError(f"state incomplete (missing {sorted(missing) or ['model state']})")


def _describe_changes(old: dict, new: dict) -> str:
    keys = sorted(set(old) | set(new))
    parts = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
    return ", ".join(parts) or "format changed"
