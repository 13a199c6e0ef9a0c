"""The OpenAPI schema FastAPI publishes describes the API truthfully: schemathesis generates
requests from it and checks every answer against it (status codes, content types, bodies)."""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from wanserve.api.app import create_app
from wanserve.config import Settings
from wanserve.services import Services

KEY = "sk-schemathesis"


# schemathesis needs the app when the module is collected, so it gets its own data dir here
_DATA = Path(tempfile.mkdtemp(prefix="wanserve-openapi-"))
atexit.register(shutil.rmtree, _DATA, ignore_errors=True)
_SERVICES = Services.open(Settings(data_dir=_DATA, api_key=KEY))
APP = create_app(_SERVICES)
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@schema.parametrize()
@settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_answer_matches_the_published_schema_and_none_is_a_server_error(case):
    case.call_and_validate(headers={"Authorization": f"Bearer {KEY}", "X-DashScope-Async": "enable"},
                           checks=[not_a_server_error, status_code_conformance, content_type_conformance,
                                   response_schema_conformance])


def test_create_body_schema_lists_every_catalog_model():
    from wanserve.catalog.models import all_names

    doc = APP.openapi()
    assert set(doc["components"]["schemas"]["CreateBody"]["properties"]["model"]["enum"]) == set(all_names())
    create = doc["paths"]["/api/v1/services/aigc/video-generation/video-synthesis"]["post"]
    assert create["requestBody"]["content"]["application/json"]["schema"]["$ref"].endswith("/CreateBody")
    assert {"200", "400", "401", "403"} <= set(create["responses"])
