"""The console's routes over plain HTTP: the page and its files, the catalog it draws its forms from, and
the API documentation pages, which must load nothing from another host (wanserve runs offline)."""

from __future__ import annotations

import re
from urllib.parse import urljoin

import httpx
import pytest

from wanserve.catalog.models import MODELS, NEG_PROMPT_MAX

from .conftest import Server

LINK = re.compile(r"""(?:src|href|url)\s*[=:]\s*['"]([^'"]+)['"]""")


@pytest.fixture
def server(make_server) -> Server:
    return make_server(workers=0)


def test_the_console_page_and_its_files_are_served_without_a_key(server: Server):
    page = httpx.get(server.base + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for path in ("console/static/app.js", "console/static/style.css"):
        assert path in page.text
        assert httpx.get(f"{server.base}/{path}").status_code == 200


@pytest.mark.parametrize("path", ["/docs", "/redoc"])
def test_the_api_docs_load_only_files_of_this_server(server: Server, path: str):
    page = httpx.get(server.base + path)
    assert page.status_code == 200
    links = LINK.findall(page.text)
    assert links and not re.search(r"https?://|//[a-z]", page.text, re.IGNORECASE), links
    for link in links:
        assert httpx.get(urljoin(server.base + path, link)).status_code == 200, link


def test_the_documentation_pages_are_not_in_the_schema(server: Server):
    paths = httpx.get(server.base + "/openapi.json").json()["paths"]
    assert not {"/", "/docs", "/redoc", "/console/catalog.json"} & set(paths)


def test_the_catalog_json_gives_each_model_its_own_choices(server: Server):
    catalog = httpx.get(server.base + "/console/catalog.json").json()
    assert catalog["negative_prompt_max"] == NEG_PROMPT_MAX
    by_name = {m["name"]: m for m in catalog["models"]}
    assert list(by_name) == [m.name for m in MODELS]
    for spec in MODELS:
        model = by_name[spec.name]
        assert model["path"] == f"/api/v1/services/aigc/{spec.endpoint}/video-synthesis"
        assert model["durations"] == list(spec.durations)
        assert model["default_duration"] == spec.default_duration
        assert model["resolutions"] == list(spec.resolutions) and model["templates"] == list(spec.templates)
        assert model["prompt_max"] == spec.prompt_max and model["shot_type"] == spec.multi_shot


def test_the_catalog_json_names_each_kinds_inputs_as_the_body_takes_them(server: Server):
    by_name = {m["name"]: m for m in httpx.get(server.base + "/console/catalog.json").json()["models"]}
    fields = {name: [(i["field"], i["media_type"]) for i in m["inputs"]] for name, m in by_name.items()}
    assert fields["wan2.6-t2v"] == [("audio_url", None)] and by_name["wan2.6-t2v"]["sizes"][0] == "1280*720"
    assert fields["wanx2.1-t2v-turbo"] == [] and by_name["wanx2.1-i2v-turbo"]["sizes"] == []
    assert fields["wan2.6-i2v-flash"] == [("img_url", None), ("audio_url", None)]
    assert by_name["wan2.6-i2v-flash"]["audio_switch"] and not by_name["wan2.6-i2v"]["audio_switch"]
    assert fields["wan2.2-kf2v-flash"] == [("first_frame_url", None), ("last_frame_url", None)]
    assert fields["wan2.7-i2v"] == [("media", t) for t in
                                    ("first_frame", "last_frame", "driving_audio", "first_clip")]
