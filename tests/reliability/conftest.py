"""The reliability suite reuses the service tests' fixtures: the tiny model, databases, real servers."""

from tests.app.conftest import (  # noqa: F401 - fixtures, registered by being imported here
    db_url, pg_ok, pg_url, server_factory, tiny_model_dir,
)
