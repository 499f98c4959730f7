"""The console in a real browser: Debian's chromium, driven by Selenium through the system
chromedriver (``scripts/install_browser.sh`` installs both; nothing downloads a browser).

A person's whole cycle -- sign in, submit an edit, see it applied, revert it, see the history
change, restore the version -- against a real server; a read key's honest view; the review
queue; KPI charts. Screenshots land in ``build/screenshots/console/``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from tests.app.conftest import ADMIN_KEY, RunningServer, wait_edit

CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
SHOTS = Path(__file__).resolve().parents[2] / "build" / "screenshots" / "console"
WAIT_S = 60


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    assert CHROMIUM.exists() and CHROMEDRIVER.exists(), (
        "the browser tests need Debian's chromium and chromium-driver: run scripts/install_browser.sh")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--no-first-run", "--window-size=1400,1000"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(WAIT_S)
    SHOTS.mkdir(parents=True, exist_ok=True)
    yield driver
    driver.quit()


def until(driver: WebDriver, what: Callable[[WebDriver], Any], timeout: float = WAIT_S) -> Any:
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(what)


def shot(driver: WebDriver, name: str) -> None:
    path = SHOTS / f"{name}.png"
    assert driver.save_screenshot(str(path)) and path.stat().st_size > 0


def sign_in(driver: WebDriver, server: RunningServer, key: str) -> None:
    driver.get(f"{server.url}/admin")
    driver.execute_script("sessionStorage.clear()")
    driver.get(f"{server.url}/admin#history")
    field = until(driver, lambda d: d.find_element(By.ID, "api-key"))
    field.send_keys(key)
    driver.find_element(By.CSS_SELECTOR, "#sign-in-form button").click()
    until(driver, lambda d: d.find_element(By.ID, "nav").is_displayed())


def go(driver: WebDriver, page: str) -> None:
    driver.find_element(By.CSS_SELECTOR, f'[data-nav="{page}"]').click()
    until(driver, lambda d: d.find_element(By.CSS_SELECTOR, f'[data-page="{page}"]').is_displayed())


def history_row(driver: WebDriver, edit_id: int, status: str) -> WebElement:
    """The history row of ``edit_id`` once it shows ``status`` (re-filtering until it does)."""
    def row(d: WebDriver) -> WebElement | bool:
        found = d.find_elements(By.CSS_SELECTOR, f'#history-table tr[data-edit="{edit_id}"][data-status="{status}"]')
        if not found:
            d.find_element(By.CSS_SELECTOR, "#history-filter button").click()
            time.sleep(0.2)
        return found[0] if found else False
    return until(driver, row)


def confirm(driver: WebDriver, reason: str) -> None:
    dialog = until(driver, lambda d: d.find_element(By.ID, "confirm-dialog"))
    until(driver, lambda d: dialog.get_attribute("open") is not None)
    driver.find_element(By.ID, "confirm-reason").send_keys(reason)
    driver.find_element(By.ID, "confirm-ok").click()


def toast_says(driver: WebDriver, text: str) -> str:
    return until(driver, lambda d: text in d.find_element(By.ID, "toast").text and d.find_element(By.ID, "toast").text)


def test_edit_check_revert_restore_in_the_browser(browser: WebDriver, server: RunningServer) -> None:
    sign_in(browser, server, ADMIN_KEY)
    assert "admin" in browser.find_element(By.ID, "who-scopes").text
    assert browser.execute_script("return sessionStorage.getItem('smedit.apiKey')") == ADMIN_KEY
    assert browser.execute_script("return localStorage.length") == 0  # the key never outlives the tab

    go(browser, "submit")
    browser.find_element(By.ID, "edit-prompt").send_keys("The capital of France is")
    browser.find_element(By.ID, "edit-target").send_keys("Rome")
    browser.find_element(By.ID, "edit-paraphrases").send_keys("France's capital is")
    browser.find_element(By.ID, "edit-author").send_keys("browser-test")
    browser.find_element(By.ID, "edit-reason").send_keys("capital moved")
    browser.find_element(By.ID, "edit-submit").click()
    result = until(browser, lambda d: "applied" in d.find_element(By.ID, "edit-result").text
                   and d.find_element(By.ID, "edit-result"))
    edit_id = int(result.text.split("#", 1)[1].split(":", 1)[0])
    assert "ES" in result.text
    shot(browser, "1-submitted")
    edit = server.client().get(f"/v1/edits/{edit_id}").json()
    assert edit["status"] == "applied" and edit["author"] == "browser-test" and edit["paraphrases"] == ["France's capital is"]

    go(browser, "history")
    row = history_row(browser, edit_id, "applied")
    assert "Rome" in row.text and "capital moved" in row.text and "passed" in row.text
    row.find_element(By.CSS_SELECTOR, '[data-action="revert"]').click()
    confirm(browser, "customer complaint")
    toast_says(browser, f"Edit #{edit_id} reverted")
    history_row(browser, edit_id, "reverted")
    shot(browser, "2-reverted")
    assert server.client().get(f"/v1/edits/{edit_id}").json()["status"] == "reverted"

    go(browser, "versions")
    applied_version = edit["applied_version"]
    target = until(browser, lambda d: d.find_element(By.CSS_SELECTOR, f'#versions-table tr[data-version="{applied_version}"]'))
    revert_row = browser.find_element(By.CSS_SELECTOR, '#versions-table tr[data-live="true"]')
    assert "reason: customer complaint" in revert_row.text
    target.find_element(By.CSS_SELECTOR, '[data-action="restore"]').click()
    confirm(browser, "complaint withdrawn")
    toast_says(browser, f"Version {applied_version} restored")
    live = until(browser, lambda d: "complaint withdrawn" in d.find_element(
        By.CSS_SELECTOR, '#versions-table tr[data-live="true"]').text and d.find_element(
        By.CSS_SELECTOR, '#versions-table tr[data-live="true"]'))
    assert "restore" in live.text
    shot(browser, "3-restored")
    go(browser, "history")
    history_row(browser, edit_id, "applied")
    assert server.client().get(f"/v1/edits/{edit_id}").json()["status"] == "applied"

    go(browser, "kpis")
    charts = until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#kpi-charts .chart"))
    assert len(charts) == 7
    success = browser.find_element(By.CSS_SELECTOR, '[data-chart="Edit success (mean ES)"]')
    assert success.find_elements(By.CSS_SELECTOR, "circle") and "no data" not in success.text
    shot(browser, "4-kpis")


def test_a_read_key_sees_no_buttons_and_the_api_still_refuses(browser: WebDriver, server: RunningServer) -> None:
    admin = server.client()
    edit_id = admin.post("/v1/edits", json={"prompt": "The sky is", "target": "green"}).json()["edit_ids"][0]
    assert wait_edit(admin, edit_id)["status"] == "applied"
    token = admin.post("/v1/keys", json={"name": "viewer", "scopes": ["read"]}).json()["key"]
    sign_in(browser, server, token)
    history_row(browser, edit_id, "applied")
    assert not browser.find_elements(By.CSS_SELECTOR, '[data-action="revert"]')
    go(browser, "versions")
    until(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#versions-table tbody tr"))
    assert not browser.find_elements(By.CSS_SELECTOR, '[data-action="restore"]')
    go(browser, "submit")
    assert not browser.find_element(By.ID, "edit-form").is_displayed()
    assert "edit" in browser.find_element(By.CSS_SELECTOR, ".needs-scope").text
    shot(browser, "5-read-key")
    status = browser.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        f"fetch('/v1/edits/{edit_id}/revert', {{method: 'POST', headers: {{Authorization: 'Bearer ' +"
        " sessionStorage.getItem('smedit.apiKey')}}).then(r => done(r.status));")
    assert status == 403
    browser.find_element(By.ID, "sign-out").click()
    assert browser.find_element(By.ID, "sign-in").is_displayed()
    assert browser.execute_script("return sessionStorage.getItem('smedit.apiKey')") is None


def test_a_bad_key_is_refused_at_sign_in(browser: WebDriver, server: RunningServer) -> None:
    browser.get(f"{server.url}/admin")
    browser.execute_script("sessionStorage.clear()")
    browser.refresh()
    until(browser, lambda d: d.find_element(By.ID, "api-key")).send_keys("not-a-real-key")
    browser.find_element(By.CSS_SELECTOR, "#sign-in-form button").click()
    error = until(browser, lambda d: d.find_element(By.ID, "sign-in-error").text)
    assert "not valid" in error
    assert not browser.find_element(By.ID, "nav").is_displayed()
    assert browser.execute_script("return sessionStorage.getItem('smedit.apiKey')") is None


def test_review_queue_approve_and_reject(browser: WebDriver, server_factory: Any) -> None:
    server = server_factory(review_mode=True, gate_min_es=1.01)  # no edit can pass: all are held
    admin = server.client()
    ids = admin.post("/v1/edits", json={"edits": [{"prompt": "The sky is", "target": "green"},
                                                  {"prompt": "Water boils at", "target": "ten degrees"}]}).json()["edit_ids"]
    assert [wait_edit(admin, i)["status"] for i in ids] == ["needs_review", "needs_review"]
    sign_in(browser, server, ADMIN_KEY)
    until(browser, lambda d: d.find_element(By.ID, "review-count").text == "2")
    go(browser, "review")
    rows = until(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#review-table tbody tr")) == 2
                 and d.find_elements(By.CSS_SELECTOR, "#review-table tbody tr"))
    assert "es" in rows[0].text.lower()  # the gate's reason is shown
    shot(browser, "6-review")
    keep = browser.find_element(By.CSS_SELECTOR, f'#review-table tr[data-edit="{ids[0]}"]')
    keep.find_element(By.CSS_SELECTOR, '[data-role="note"]').send_keys("checked by hand")
    keep.find_element(By.CSS_SELECTOR, '[data-action="approve"]').click()
    toast_says(browser, f"Edit #{ids[0]}: applied")
    drop = until(browser, lambda d: d.find_element(By.CSS_SELECTOR, f'#review-table tr[data-edit="{ids[1]}"]'))
    drop.find_element(By.CSS_SELECTOR, '[data-action="reject"]').click()
    toast_says(browser, f"Edit #{ids[1]} rejected")
    until(browser, lambda d: d.find_element(By.ID, "review-empty").is_displayed())
    assert admin.get(f"/v1/edits/{ids[0]}").json()["status"] == "applied"
    assert admin.get(f"/v1/edits/{ids[1]}").json()["status"] == "rejected"


def test_an_upload_is_sent_in_chunks_the_service_takes(browser: WebDriver, server_factory: Any, tmp_path: Path) -> None:
    """With SMEDIT_MAX_BATCH=2 a 5-fact upload still goes through: the console reads the limit
    from GET /v1/model and posts at most 2 facts at a time (one POST of 5 would be a 422)."""
    import json

    server = server_factory(max_batch=2)
    admin = server.client()
    assert admin.get("/v1/model").json()["limits"]["max_batch"] == 2
    assert admin.post("/v1/edits", json={"edits": [{"prompt": f"P{i} is", "target": "x"} for i in range(3)]}
                      ).status_code == 422
    upload = tmp_path / "facts.jsonl"
    upload.write_text("\n".join(json.dumps({"prompt": f"Unit {i} ships from", "target": f"dock {i}"})
                                for i in range(5)) + "\n")
    sign_in(browser, server, ADMIN_KEY)
    go(browser, "submit")
    until(browser, lambda d: d.find_element(By.ID, "upload-batch").text == "2")  # the limit, read after sign-in
    browser.find_element(By.ID, "upload-file").send_keys(str(upload))
    browser.find_element(By.ID, "upload-submit").click()
    until(browser, lambda d: "Submitted 5 facts" in d.find_element(By.ID, "upload-result").text)
    edits = admin.get("/v1/edits", params={"limit": 50}).json()
    assert edits["total"] == 5 and {e["prompt"] for e in edits["items"]} == {f"Unit {i} ships from" for i in range(5)}


def test_an_edit_in_full_in_its_detail_view(browser: WebDriver, server: RunningServer) -> None:
    admin = server.client()
    (eid,) = admin.post("/v1/edits", json={"prompt": "The sky is", "target": "green", "author": "ops",
                                           "reason": "ticket 7", "paraphrases": ["The colour of the sky is"]}
                        ).json()["edit_ids"]
    edit = wait_edit(admin, eid)
    assert edit["status"] == "applied"
    sign_in(browser, server, ADMIN_KEY)
    go(browser, "history")
    history_row(browser, eid, "applied").find_element(By.CSS_SELECTOR, '[data-action="details"]').click()
    dialog = until(browser, lambda d: d.find_element(By.ID, "edit-dialog"))
    until(browser, lambda d: dialog.get_attribute("open") is not None)

    def field(name: str) -> str:
        return browser.find_element(By.CSS_SELECTOR, f'#edit-fields dd[data-field="{name}"]').text

    assert browser.find_element(By.ID, "edit-title").text == f"Edit #{eid}"
    assert (field("Status"), field("Prompt"), field("Target")) == ("applied", "The sky is", "green")
    assert field("Paraphrases") == "The colour of the sky is" and field("Reason") == "ticket 7"
    assert field("Applied in") == f"v{edit['applied_version']}" and field("Delta") == str(edit["delta_id"])
    assert field("Gate") == "passed" and field("Edit success (ES)").endswith("%")
    shot(browser, "7-edit-detail")
    browser.find_element(By.ID, "edit-close").click()
    until(browser, lambda d: dialog.get_attribute("open") is None)
