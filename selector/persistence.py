"""Saving and loading a policy without pickle.

A node restarts (update, crash, reboot of a board) and should not forget what it learned, but a
state file must never be able to run code when loaded, so the format is a plain ``.npz``:

* ``selector.format``: int64 scalar, the format version (:data:`FORMAT_VERSION`);
* ``selector.config``: uint8 array holding UTF-8 JSON: the policy name, its constructor
  parameters, and its learned scalars (counters, random generator state, merged sequences);
* every learned array of the policy under its own name (arm keys as a numpy unicode array).

It is read with ``np.load(..., allow_pickle=False)`` and every array is copied back as saved, so a
loaded policy is bit-for-bit the saved one and makes the same decisions afterwards. The file is
written to a temporary name and renamed, so a crash mid-save leaves the previous state intact.
Pending decisions (waiting for feedback) are not saved: they are keyed to a monotonic clock
that does not survive a restart, and feedback for them is refused after one.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from selector.errors import PersistenceError, SelectorError
from selector.policy import Policy
from selector.registry import POLICY_CLASSES

FORMAT_VERSION = 1
_FORMAT_KEY = "selector.format"
_CONFIG_KEY = "selector.config"


def policy_to_arrays(policy: Policy) -> dict[str, np.ndarray]:
    """The arrays :func:`save` writes (also usable to ship a whole policy over the wire)."""
    config = {"policy": policy.name, "parameters": policy.parameters(), "state": policy.state_values()}
    try:
        encoded = json.dumps(config, sort_keys=True, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as error:
        raise PersistenceError(f"policy configuration is not JSON-able: {error}") from error
    arrays = policy.state_arrays()
    clashes = {_FORMAT_KEY, _CONFIG_KEY} & set(arrays)
    if clashes:
        raise PersistenceError(f"policy state uses reserved array names {sorted(clashes)}")
    return {_FORMAT_KEY: np.array(FORMAT_VERSION, dtype=np.int64),
            _CONFIG_KEY: np.frombuffer(encoded, dtype=np.uint8).copy(), **arrays}


def policy_from_arrays(arrays: dict[str, np.ndarray]) -> Policy:
    """The policy that :func:`policy_to_arrays` described."""
    try:
        version = int(arrays[_FORMAT_KEY])
        config: dict[str, Any] = json.loads(np.asarray(arrays[_CONFIG_KEY], dtype=np.uint8).tobytes().decode("utf-8"))
    except KeyError as error:
        raise PersistenceError(f"not a selector state: array {error} is missing") from error
    except (TypeError, ValueError) as error:  # ValueError covers JSON and UTF-8 errors
        raise PersistenceError(f"selector state has an unreadable config: {error}") from error
    if version != FORMAT_VERSION:
        raise PersistenceError(f"selector state format {version} is not supported (expected {FORMAT_VERSION})")
    if not isinstance(config, dict) or not isinstance(config.get("parameters"), dict) \
            or not isinstance(config.get("state"), dict):
        raise PersistenceError("selector state config lacks 'parameters' or 'state'")
    cls = POLICY_CLASSES.get(str(config.get("policy")))
    if cls is None:
        raise PersistenceError(f"selector state names an unknown policy {config.get('policy')!r}")
    try:
        policy = cls(**config["parameters"])
    except (TypeError, SelectorError) as error:
        raise PersistenceError(f"selector state has invalid parameters: {error}") from error
    policy.restore(config["state"], arrays)
    return policy


def save(policy: Policy, path: str | os.PathLike[str]) -> Path:
    """Write ``policy`` to ``path`` (atomically: temporary file, then rename); returns the path."""
    target = Path(path)
    arrays: dict[str, Any] = policy_to_arrays(policy)  # Any: numpy's stub types **kwargs as allow_pickle
    temporary = target.with_name(target.name + ".partial")
    try:
        with open(temporary, "wb") as handle:
            np.savez(handle, **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except OSError as error:
        temporary.unlink(missing_ok=True)
        raise PersistenceError(f"cannot save policy to {target}: {error}") from error
    return target


def load(path: str | os.PathLike[str]) -> Policy:
    """Read a policy written by :func:`save` (never unpickles anything)."""
    try:
        loaded = np.load(Path(path), allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise PersistenceError(f"{path} holds a single array, not a selector state archive")
        with loaded as archive:
            arrays = {name: archive[name] for name in archive.files}
    except FileNotFoundError as error:
        raise PersistenceError(f"no saved policy at {path}") from error
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        raise PersistenceError(f"{path} is not a readable selector state: {error}") from error
    return policy_from_arrays(arrays)
