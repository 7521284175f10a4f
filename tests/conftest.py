"""Shared fixtures: composing the Hydra configs the way train.py does, shrunk for tests."""

import pytest


@pytest.fixture
def compose_cfg():
    """compose_cfg(config_name, overrides, **compose_kwargs) -> DictConfig, without running Hydra's app."""
    # Imported here, not at module level: the op tests must collect where hydra is not installed (GPU machine).
    from maskrcnn.config import compose_config

    return compose_config
