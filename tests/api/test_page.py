"""The web page as a person uses it, in a real browser: what it says when the API refuses a request, and
the result saved as a file."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from api.main import create_app
from tests.api.test_edits import image_bytes
from tests.api.test_jobs import claim, finish
from tests.conftest import ApiHarness, live_server

pytestmark = pytest.mark.e2e


def _fill_form(browser: Any, port: int, image: Path, **options: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(f"http://127.0.0.1:{port}/")
    WebDriverWait(browser, 30).until(lambda _: browser.find_elements(By.CSS_SELECTOR, "#model option"))
    browser.find_element(By.ID, "image").send_keys(str(image))
    browser.find_element(By.ID, "instruction").send_keys("make the circle blue")
    browser.find_element(By.CSS_SELECTOR, "details summary").click()
    for name, value in options.items():
        browser.find_element(By.ID, name).send_keys(value)
    browser.find_element(By.ID, "submit").click()


def test_a_refused_request_names_the_field_and_what_is_wrong(
    harness: ApiHarness, browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    image = tmp_path / "in.png"
    image.write_bytes(image_bytes())
    with live_server(create_app(harness.settings)) as port:
        _fill_form(browser, port, image, tau="0")
        error = browser.find_element(By.ID, "error")
        WebDriverWait(browser, 30).until(lambda _: error.is_displayed())
        # before: "invalid_request: the request is not valid", with no word of which field
        assert error.text == "invalid_request: the request is not valid (tau: Input should be greater than 0)"
        browser.find_element(By.ID, "tau").clear()
        browser.find_element(By.ID, "cfg").send_keys("100")
        browser.find_element(By.ID, "submit").click()
        WebDriverWait(browser, 30).until(lambda _: "cfg" in error.text)
        assert error.text == "invalid_request: cfg must be between 1.0 and 10.0"  # the message says it all


def test_the_result_downloads_as_a_file_named_after_the_job(
    harness: ApiHarness, browser: Any, tmp_path: Path
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    image = tmp_path / "in.png"
    image.write_bytes(image_bytes())
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    browser.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    result = image_bytes(size=(32, 32))
    with live_server(create_app(harness.settings)) as port:
        _fill_form(browser, port, image)
        wait = WebDriverWait(browser, 30)
        wait.until(lambda _: browser.find_element(By.ID, "job-id").text)
        job_id = browser.find_element(By.ID, "job-id").text
        link = browser.find_element(By.ID, "download")
        assert not link.is_displayed()  # nothing to save yet
        finish(harness, job_id, claim(harness, job_id), result)
        # before: no way to save the result but the image's context menu, under a random blob name
        wait.until(lambda _: link.is_displayed())
        assert link.get_attribute("download") == f"edit-{job_id}.png"
        link.click()
        saved = downloads / f"edit-{job_id}.png"
        deadline = time.monotonic() + 30
        while not (saved.exists() and saved.read_bytes() == result):
            assert time.monotonic() < deadline, list(downloads.iterdir())
            time.sleep(0.05)  # polling the download folder, bounded by the deadline
