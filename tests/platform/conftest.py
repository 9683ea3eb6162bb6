"""Platform fixtures: the store on both backends and a tiny job body on the tiny model."""

import pytest
from db_backends import backend, store  # noqa: F401
from platform_data import tiny_job_body


@pytest.fixture
def tiny_job(tiny_model_dir):
    return lambda file_id, **extra: tiny_job_body(str(tiny_model_dir), file_id, **extra)
