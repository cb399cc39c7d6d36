"""Fixtures of the collaboration tests (helpers live in ``collaboration_support``)."""

from __future__ import annotations

import pytest

from zoo.manifest import Manifest, read_manifest


@pytest.fixture(scope="session")
def manifest() -> Manifest:
    return read_manifest()
