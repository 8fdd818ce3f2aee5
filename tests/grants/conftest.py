"""Fixtures for the grant tests; the helpers live in ``grantkit``."""

from __future__ import annotations

import pytest
from grantkit import World, make_world


@pytest.fixture(scope="session")
def world() -> World:
    return make_world()
