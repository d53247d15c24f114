"""``serve --mtls`` (client certificates required) met without a certificate: the handshake completes and every
request gets a 401 that says what is needed, a page for a browser and JSON for everyone else (issue 14). Was:
``ssl.CERT_REQUIRED`` ended the handshake, Chromium showed ERR_SOCKET_NOT_CONNECTED and httpx "Server
disconnected without sending a response"."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import hashes

from tests.api.harness import EXPERIMENT, ApiHarness
from tests.api.servers import client_tls, running_server
from tests.api.test_dashboard_browser import CHROMEDRIVER, CHROMIUM, FLAGS, _need_browser, eventually


def test_no_certificate_gets_a_401_naming_what_is_needed_and_nothing_behind_it(
    sqlite_api: ApiHarness, tmp_path: Path
) -> None:
    pki = sqlite_api.pki
    app = sqlite_api.new_app(client_certificates="required")
    token = pki.token("bob", (EXPERIMENT,))
    fingerprint = pki.ca.certificate.fingerprint(hashes.SHA256()).hex(":").upper()
    with running_server(app, pki) as url, httpx.Client(base_url=url, verify=client_tls(pki)) as anonymous:
        for path in ("/v1/health", "/v1/me", "/ui", "/ui/login", "/v1/streams"):
            refused = anonymous.get(path)
            assert refused.status_code == 401, (path, refused.text)
            assert "no client certificate" in refused.json()["detail"]
            assert refused.headers["www-authenticate"].startswith("Mutual-TLS")
        with_token = anonymous.post("/v1/streams", json={}, headers={"Authorization": f"Bearer {token}"})
        assert with_token.status_code == 401 and "no client certificate" in with_token.json()["detail"]
        page = anonymous.get("/ui", headers={"Accept": "text/html,application/xhtml+xml"})
        assert page.status_code == 401 and page.headers["content-type"].startswith("text/html")
        assert 'data-page="certificate-required"' in page.text and fingerprint in page.text
        assert "export-p12" in page.text and "default-src 'none'" in page.headers["content-security-policy"]

        frank = pki.add_user(f"frank-{uuid.uuid4().hex[:6]}", [EXPERIMENT], tmp_path)
        with httpx.Client(base_url=url, verify=client_tls(pki, frank)) as client:
            assert client.get("/v1/health").status_code == 200
            pki.ca.revoke(pki.serial(frank))
            revoked = client.get("/v1/health", headers={"Accept": "text/html"})
            assert revoked.status_code == 401 and "revoked" in revoked.text
    app.state.services.db.dispose()


@pytest.mark.browser
def test_chromium_without_a_certificate_shows_the_page_saying_how_to_get_one(
    sqlite_api: ApiHarness, tmp_path: Path
) -> None:
    _need_browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    pki = sqlite_api.pki
    app = sqlite_api.new_app(client_certificates="required")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in [*FLAGS, f"--user-data-dir={tmp_path / 'chromium'}"]:
        options.add_argument(flag)
    with running_server(app, pki) as url:
        driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
        try:
            driver.set_page_load_timeout(20)
            driver.get(f"{url}/ui")
            heading = eventually(lambda: driver.find_element(By.ID, "certificate-required").text, what="the page")
            assert "client certificate" in heading
            assert "no client certificate" in driver.find_element(By.ID, "reason").text
            assert driver.find_element(By.ID, "ca-name").text == "test CA"
        finally:
            driver.quit()
    app.state.services.db.dispose()
