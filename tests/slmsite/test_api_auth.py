import json

import pytest
from django.test import Client

from slmsite.services import api_token_create

URL = "/api/sentiment/models"


@pytest.mark.django_db
def test_no_credentials_is_401_even_with_csrf_enforced():
    client = Client(enforce_csrf_checks=True)
    r = client.post("/api/sentiment/predict", data=json.dumps({"texts": ["x"]}), content_type="application/json")
    assert r.status_code == 401
    assert client.get(URL).status_code == 401


@pytest.mark.django_db
def test_token_needs_no_csrf_and_session_post_needs_it(plain_user, password):
    raw = api_token_create(user=plain_user)
    token_client = Client(enforce_csrf_checks=True, HTTP_AUTHORIZATION=f"Bearer {raw}")
    r = token_client.post("/api/sentiment/predict", data=json.dumps({"texts": ["x"]}), content_type="application/json")
    assert r.status_code != 401 and r.status_code != 403  # 503 here: no live model in this test registry
    session = Client(enforce_csrf_checks=True)
    session.login(username=plain_user.username, password=password)
    r = session.post("/api/sentiment/predict", data=json.dumps({"texts": ["x"]}), content_type="application/json")
    assert r.status_code == 403 and "CSRF" in r.json()["message"]
