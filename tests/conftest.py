"""Shared fixtures: composing the Hydra configs the way train.py does, shrunk for tests.

hydra and maskrcnn are imported inside the fixture, so that the tests that need neither (the op tests) collect
and run where hydra is not installed.
"""

import pytest


@pytest.fixture
def compose_cfg():
    """compose_cfg(config_name, overrides, **compose_kwargs) -> DictConfig, without running Hydra's app."""
    from maskrcnn.config import compose_config

    return compose_config
