"""Save/load round-trips bit-exactly, without pickle, and refuses what it cannot trust."""

from __future__ import annotations

import json

import numpy as np
import pytest

from selector import Arm, PersistenceError, load, make_policy, policy_names, save
from selector.persistence import policy_to_arrays

ARMS = [Arm(f"variant-{i}", i % 3, None if i % 2 else 1) for i in range(7)]


def trained(name: str, **extra):
    options = {"arm": ARMS[2]} if name == "fixed" else dict(extra)
    if name not in ("fixed", "linucb", "discounted-linucb", "adaptive-linucb"):
        options["seed"] = 123
    policy = make_policy(name, 5, **options)
    generator = np.random.default_rng(9)
    for index in range(150):
        context = generator.random(5)
        arm = policy.select(context, ARMS)
        if index % 3:
            policy.update(context, arm, float(generator.normal()))
        else:
            policy.remember(f"r{index}", context, arm, provisional_reward=0.1)
            policy.feedback(f"r{index}", float(generator.normal()))
    other = make_policy("linucb", 5, origin="peer")
    other.update(np.ones(5), ARMS[6], 0.5)
    policy.merge(other.export_delta())
    policy.export_delta()
    policy.update(np.full(5, 0.3), ARMS[0], 0.7)  # an unexported delta must survive too
    return policy


CASES = [(name, {}) for name in policy_names()] + [
    ("thompson", {"discount": 0.9}),  # global discount: renormalises its scale during training
    ("linucb", {"discount": 0.97, "arm_discount": 0.8}),
]


@pytest.mark.parametrize(("name", "extra"), CASES)
def test_save_load_is_bit_exact_and_continues_identically(name, extra, tmp_path):
    original = trained(name, **extra)
    path = save(original, tmp_path / "policy.npz")
    restored = load(path)
    assert type(restored) is type(original)
    before, after = policy_to_arrays(original), policy_to_arrays(restored)
    assert before.keys() == after.keys()
    for key in before:
        assert before[key].dtype == after[key].dtype, key
        assert np.array_equal(before[key], after[key]), key
    # the same future: same decisions (same random draws) and same learned state
    generator = np.random.default_rng(1)
    for _ in range(40):
        context = generator.random(5)
        left, right = original.select(context, ARMS), restored.select(context, ARMS)
        assert left == right
        reward = float(generator.normal())
        original.update(context, left, reward)
        restored.update(context, right, reward)
    for key, array in policy_to_arrays(original).items():
        assert np.array_equal(array, policy_to_arrays(restored)[key]), key


def test_saved_file_loads_without_pickle(tmp_path):
    path = save(trained("thompson"), tmp_path / "state.npz")
    with np.load(path, allow_pickle=False) as archive:
        config = json.loads(archive["selector.config"].tobytes())
        assert config["policy"] == "thompson"
        assert all(archive[name].dtype != object for name in archive.files)


def test_untrusted_or_broken_files_are_refused(tmp_path):
    with pytest.raises(PersistenceError):
        load(tmp_path / "missing.npz")
    (tmp_path / "garbage.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(PersistenceError):
        load(tmp_path / "garbage.npz")
    np.savez(tmp_path / "pickled.npz", payload=np.array([{"evil": 1}], dtype=object))
    with pytest.raises(PersistenceError):
        load(tmp_path / "pickled.npz")
    arrays = policy_to_arrays(trained("linucb"))
    config = json.loads(arrays["selector.config"].tobytes())
    config["policy"] = "mystery"
    tampered = {**arrays, "selector.config": np.frombuffer(json.dumps(config).encode(), dtype=np.uint8)}
    np.savez(tmp_path / "unknown.npz", **tampered)
    with pytest.raises(PersistenceError):
        load(tmp_path / "unknown.npz")
    truncated = {key: value for key, value in arrays.items() if key != "ridge.inverse"}
    np.savez(tmp_path / "truncated.npz", **truncated)
    with pytest.raises(PersistenceError):
        load(tmp_path / "truncated.npz")
    np.savez(tmp_path / "future.npz", **{**arrays, "selector.format": np.array(99)})
    with pytest.raises(PersistenceError):
        load(tmp_path / "future.npz")


def test_save_replaces_atomically(tmp_path):
    path = tmp_path / "policy.npz"
    save(make_policy("linucb", 2), path)
    save(trained("linucb"), path)
    assert load(path).dimension == 5
    assert [p.name for p in tmp_path.iterdir()] == ["policy.npz"]
