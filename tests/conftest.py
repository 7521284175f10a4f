"""Shared fixtures: composing the Hydra configs the way train.py does, shrunk for tests.

hydra and maskrcnn are imported inside the fixture, so that the tests that need neither (the op tests) collect
and run where hydra is not installed.
"""

from pathlib import Path

import pytest

CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "configs")


@pytest.fixture
def compose_cfg():
    """compose_cfg(config_name, overrides, **compose_kwargs) -> DictConfig, without running Hydra's app."""
    from hydra import compose, initialize_config_dir

    import maskrcnn  # noqa: F401  (registers the ${roi_id:...} resolver the configs use)

    def _compose(config_name: str = "train", overrides: list[str] | None = None, **kwargs):
        with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
            return compose(config_name=config_name, overrides=overrides or [], **kwargs)

    return _compose
