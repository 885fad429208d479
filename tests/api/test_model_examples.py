"""`/v1/models` shows what a model understands and its examples; their images come from this server."""

from __future__ import annotations

from jobs.workers import ModelFacts
from tests.conftest import ApiHarness, record_tiny_facts


def test_examples_are_listed_and_their_images_served(harness: ApiHarness) -> None:
    harness.storage.put("models/tiny/examples/0", b"\x89PNG-bytes", "image/png")
    example = {
        "instruction": "make the circle blue",
        "image_key": "models/tiny/examples/0",
        "content_type": "image/png",
    }
    record_tiny_facts(
        harness.sessions, ModelFacts("tiny", [32], {"cfg": 3.0, "tau": 0.1}, "Shapes only.", [example])
    )
    [model] = harness.client.get("/v1/models").json()["data"]
    assert model["description"] == "Shapes only."
    assert model["examples"] == [
        {"instruction": "make the circle blue", "image_url": "/v1/models/tiny/examples/0"}
    ]
    image = harness.client.get("/v1/models/tiny/examples/0")
    assert image.status_code == 200 and image.content == b"\x89PNG-bytes"
    assert image.headers["content-type"] == "image/png"
    assert harness.client.get("/v1/models/tiny/examples/1").status_code == 404
    assert harness.client.get("/v1/models/other/examples/0").status_code == 404
