"""schemathesis against /api/openapi.json (in-process WSGI): generated and invalid requests never get a 5xx
and never a response that contradicts the published schema (status codes, bodies, content types)."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from slmsite.wsgi import application

schema = schemathesis.openapi.from_wsgi("/api/openapi.json", application)


@pytest.fixture
def auth(db, registry, admin_user):  # type: ignore[no-untyped-def]
    from django.core.signals import request_finished, request_started
    from django.db import close_old_connections

    from sentiment.inference import reset_services
    from slm.classify.testing import make_tiny_version
    from slmsite.services import api_token_create

    reset_services()
    make_tiny_version(registry)
    raw = api_token_create(user=admin_user, name="schemathesis")
    for signal in (request_started, request_finished):  # as Django's test client: keep the test's transaction
        signal.disconnect(close_old_connections)
    yield {"Authorization": f"Bearer {raw}"}
    for signal in (request_started, request_finished):
        signal.connect(close_old_connections)
    reset_services()


# Writes of the labeling API validate business rules a schema cannot state (the base model exists, the
# project name is free, a batch size fits the project): a schema-valid request may be refused there with a
# documented 4xx. Everything else, 5xx and contradictions included, is checked on every operation.
BUSINESS_RULES = ("/api/annotate/projects",)


@schema.parametrize()
@settings(max_examples=30, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_schema(case, auth):
    from schemathesis.specs.openapi.checks import positive_data_acceptance

    writes_with_rules = case.method == "POST" and case.path.startswith(BUSINESS_RULES) and "retrain" not in case.path
    case.call_and_validate(headers=auth, excluded_checks=[positive_data_acceptance] if writes_with_rules else [])


def test_the_schema_has_no_duplicate_status_keys(client):
    """JSON with both 422 and "422" as keys is a 'duplicated mapping key' for Swagger UI (/api/docs)."""
    import json

    def no_duplicates(pairs):  # type: ignore[no-untyped-def]
        keys = [k for k, _ in pairs]
        assert len(keys) == len(set(keys)), keys
        return dict(pairs)

    body = client.get("/api/openapi.json").content
    schema = json.loads(body, object_pairs_hook=no_duplicates)
    responses = schema["paths"]["/api/sentiment/predict"]["post"]["responses"]
    assert {"200", "400", "401", "413", "422"} <= set(responses)
