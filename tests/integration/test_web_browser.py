"""The web admin in a real browser (issue 14): Selenium driving Debian's headless chromium.

One server and one browser for the module. An admin signs in and adds an account and an alias through
the forms, and that account receives mail to the alias over SMTP and reads it over IMAP; a message
deferred to a closed port is retried from its queue page; a DKIM key is made and its record copied; a
non-admin gets the 403 page; the dashboard is photographed.
"""

from __future__ import annotations

import imaplib
import shutil
import smtplib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.harness import PASSWORD, KarteroServer, free_port, tls_context, wait_for
from tests.integration.web_client import StubMX

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
ADMIN, USER, SENDER = "admin@example.test", "bob@example.test", "alice@example.test"
WAIT_S = 20


@pytest.fixture(scope="module")
def sink() -> Iterator[StubMX]:
    with StubMX(b"250 2.1.5 Ok") as mx:
        yield mx


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, sink: StubMX) -> Iterator[KarteroServer]:
    closed = free_port()  # nothing listens there: each delivery attempt is refused at once
    server = KarteroServer(
        tmp_path_factory.mktemp("browser") / "k",
        http=True,
        extra_config=f'[routes]\n"closed.test" = "127.0.0.1:{closed}"\n"sink.test" = "{sink.host}:{sink.port}"\n',
    )
    server.add_user(ADMIN, admin=True)
    server.add_user(USER)
    server.add_user(SENDER)
    server.start()
    yield server
    assert server.stop() == 0, server.log


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.skip(f"browser tests need Debian's chromium and chromium-driver ({CHROMIUM}, {CHROMEDRIVER})")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1280,800",
        "--disable-extensions",
        "--no-first-run",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # to see CSP violations
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver: Any, condition: Any) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, WAIT_S).until(condition)


def sign_in(driver: Any, server: KarteroServer, address: str, *, admin: bool = True) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    driver.delete_all_cookies()
    driver.get(server.http_url + ("/admin/login" if admin else "/"))
    driver.find_element(By.NAME, "address").send_keys(address)
    driver.find_element(By.NAME, "password").send_keys(PASSWORD)
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    wait(driver, ec.presence_of_element_located((By.CSS_SELECTOR, "form.logout")))


def submit(driver: Any, form_id: str, **fields: str) -> None:
    from selenium.webdriver.common.by import By

    form = driver.find_element(By.ID, form_id)
    for name, value in fields.items():
        form.find_element(By.NAME, name).send_keys(value)
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()


def test_admin_adds_an_account_and_an_alias_that_receive_mail(server: KarteroServer, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    sign_in(browser, server, ADMIN)
    browser.find_element(By.LINK_TEXT, "Accounts").click()
    wait(browser, ec.presence_of_element_located((By.ID, "add-account")))
    submit(browser, "add-account", address="erin@example.test", password="erin password")
    wait(browser, ec.text_to_be_present_in_element((By.CSS_SELECTOR, "p.ok"), "The account was added."))
    assert browser.find_element(By.TAG_NAME, "h1").text.startswith("erin@example.test")
    browser.find_element(By.LINK_TEXT, "Aliases").click()
    wait(browser, ec.presence_of_element_located((By.ID, "add-alias")))
    submit(browser, "add-alias", source="hello@example.test", destination="erin@example.test")
    wait(browser, ec.text_to_be_present_in_element((By.CSS_SELECTOR, "p.ok"), "The alias was added."))
    assert "hello@example.test" in browser.find_element(By.ID, "aliases").text

    with smtplib.SMTP(server.host, server.port, timeout=30) as client:
        client.sendmail(
            "someone@elsewhere.test",
            ["hello@example.test"],
            b"From: someone@elsewhere.test\r\nSubject: through the alias\r\n\r\nhi\r\n",
        )
    with imaplib.IMAP4(server.host, server.imap_port) as imap:
        imap.login("erin@example.test", "erin password")
        imap.select("INBOX")
        _, found = imap.search(None, '(SUBJECT "through the alias")')
        assert found[0].split() == [b"1"]


def test_a_deferred_message_is_retried_from_the_queue_page(server: KarteroServer, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    with smtplib.SMTP(server.host, server.submission_port, timeout=30) as client:
        client.starttls(context=tls_context())
        client.login(SENDER, PASSWORD)
        client.sendmail(SENDER, ["dan@closed.test"], f"From: {SENDER}\r\nSubject: stuck\r\n\r\nhi\r\n".encode())

    def attempts() -> int:
        store = server.store()
        try:
            return sum(r.attempts for e in store.queue.queue_entries() for r in e.recipients)
        finally:
            store.close()

    wait_for(lambda: attempts() >= 1, WAIT_S)
    before = attempts()
    sign_in(browser, server, ADMIN)
    browser.find_element(By.LINK_TEXT, "Queue").click()
    wait(browser, ec.presence_of_element_located((By.ID, "queue")))
    assert "dan@closed.test" in browser.find_element(By.ID, "queue").text
    browser.find_element(By.CSS_SELECTOR, "#queue a.mono").click()
    wait(browser, ec.element_to_be_clickable((By.ID, "retry"))).click()
    wait(browser, ec.text_to_be_present_in_element((By.CSS_SELECTOR, "p.ok"), "are due now"))
    wait_for(lambda: attempts() > before, WAIT_S)
    browser.refresh()
    cell = wait(browser, ec.presence_of_element_located((By.CSS_SELECTOR, "#recipients td.attempts")))
    assert int(cell.text) > before


def test_a_dkim_key_is_generated_and_its_record_copied(server: KarteroServer, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import Select

    sign_in(browser, server, ADMIN)
    browser.find_element(By.LINK_TEXT, "Domains").click()
    form = wait(browser, ec.presence_of_element_located((By.CSS_SELECTOR, "form[action='/admin/domains/dkim']")))
    Select(form.find_element(By.NAME, "algorithm")).select_by_value("ed25519")
    form.find_element(By.NAME, "selector").send_keys("web")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait(browser, ec.text_to_be_present_in_element((By.CSS_SELECTOR, "p.ok"), "A new DKIM key was made"))
    record = browser.find_element(By.ID, "dkim-example.test-web")
    assert record.text.startswith('web._domainkey.example.test. IN TXT "v=DKIM1; k=ed25519; p=')
    button = browser.find_element(By.CSS_SELECTOR, "button.copy[data-copy='dkim-example.test-web']")
    assert button.is_displayed()  # admin.js shows the buttons it can serve
    button.click()
    # Copied to the clipboard, or (where the browser refuses the clipboard) selected for Ctrl+C.
    wait(browser, lambda d: button.text == "Copied" or d.execute_script("return String(getSelection())") == record.text)


def test_a_trace_search_shows_a_delivered_messages_path(server: KarteroServer, browser: Any, sink: StubMX) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    with smtplib.SMTP(server.host, server.submission_port, timeout=30) as client:
        client.starttls(context=tls_context())
        client.login(SENDER, PASSWORD)
        client.sendmail(SENDER, ["frank@sink.test"],
                        b"From: alice@example.test\r\nMessage-ID: <traced.1@example.test>\r\nSubject: x\r\n\r\nhi\r\n")
    wait_for(lambda: sink.messages >= 1, WAIT_S)
    sign_in(browser, server, ADMIN)
    browser.find_element(By.LINK_TEXT, "Trace").click()
    wait(browser, ec.presence_of_element_located((By.ID, "trace-search")))
    submit(browser, "trace-search", message_id="traced.1@example.test")
    wait(browser, ec.presence_of_element_located((By.ID, "trace-results")))
    (traced,) = browser.find_elements(By.CSS_SELECTOR, "li.traced")
    summary = traced.find_element(By.TAG_NAME, "summary").text
    assert "frank@sink.test" in summary and "delivered" in summary and SENDER in summary
    rows = [row.text for row in traced.find_elements(By.CSS_SELECTOR, "table.path tbody tr")]
    assert [row.split()[1] for row in rows] == ["received", "queued", "delivered"], rows
    assert "via submission" in rows[0] and f"user {SENDER}" in rows[0]
    assert "said 250 2.0.0 Ok: queued as STUB1" in rows[2] and "attempt 1" in rows[2]


def test_a_non_admin_cannot_reach_the_admin(server: KarteroServer, browser: Any) -> None:
    from selenium.webdriver.common.by import By

    sign_in(browser, server, USER, admin=False)
    browser.get(server.http_url + "/admin/")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Not allowed"
    assert "is not an administrator" in browser.page_source
    browser.get(server.http_url + "/admin/accounts")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Not allowed"


def test_dashboard_screenshot(server: KarteroServer, browser: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec

    sign_in(browser, server, ADMIN)
    browser.get(server.http_url + "/admin/")
    wait(browser, ec.presence_of_element_located((By.ID, "queue-size")))
    path = tmp_path / "dashboard.png"
    assert browser.save_screenshot(str(path))
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    # No page of the module broke the Content-Security-Policy (an inline script or style would).
    assert not [e for e in browser.get_log("browser") if "Content Security Policy" in e["message"]]
