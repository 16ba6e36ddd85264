"""The web admin's screenshots in docs/ (docs/admin.md shows them), made from a server with sample data.

    python bench/screenshots.py            # writes docs/admin-*.png
    python bench/screenshots.py --out /tmp/shots

Starts `kartero serve` on loopback (tests/integration/harness.py) with two domains, a handful of
accounts with mail, aliases (a catch-all, a remote target), a DKIM key, a loopback DNS server with a
half-finished zone and a stub MX that greylists, so the queue holds deferred messages; then drives
Debian's headless chromium (as tests/integration/test_web_browser.py does) at 1280x800, and at 390x844
for the phone view.

The dashboard's chart needs the message trace's hourly counts: until `serve` provides them, the
dashboard is photographed from the same store served in this process with a day of sample buckets
(and sample connection counts), and the docs say so.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import smtplib
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.integration.dnsserver import LoopbackDNS
from tests.integration.harness import KarteroServer, run_cli, tls_context, wait_for
from tests.integration.web_client import StubMX

ADMIN, PASSWORD = "admin@example.org", "sample password"
USERS = [
    "anna@example.org",
    "ben@example.org",
    "chloe@example.net",
    "david@example.net",
    "emma@example.org",
    "felix@example.org",
    "grace@example.net",
]
ZONE = """
example.org. 60 IN MX 10 mail.example.org.
mail.example.org. 60 IN A 127.0.0.1
example.org. 60 IN TXT "v=spf1 mx -all"
_smtp._tls.example.org. 60 IN TXT "v=TLSRPTv1; rua=mailto:tls@example.org"
1.0.0.127.in-addr.arpa. 60 IN PTR mail.example.org.
"""
DESKTOP, PHONE = (1280, 800), (390, 844)


def populate(server: KarteroServer) -> None:
    server.add_user(ADMIN, PASSWORD, admin=True)
    for user in USERS:
        server.add_user(user, PASSWORD)
    for source, destination in (
        ("postmaster@example.org", ADMIN),
        ("sales@example.org", "anna@example.org"),
        ("sales@example.org", "ben@example.org"),
        ("@example.net", "chloe@example.net"),
        ("board@example.org", "jane.doe@partner.example"),
    ):
        server.add_alias(source, destination)
    run_cli(server.config, "user", "quota", "anna@example.org", "2G")
    run_cli(server.config, "user", "quota", "ben@example.org", "500M")
    run_cli(server.config, "dkim", "keygen", "example.org", "--selector", "s1")


def send_mail(server: KarteroServer) -> None:
    with smtplib.SMTP(server.host, server.port, timeout=30) as client:
        for i, user in enumerate(USERS * 3):
            body = ("Lorem ipsum dolor sit amet.\r\n" * (40 * (i % 5 + 1))).encode()
            client.sendmail(
                "news@lists.example.com",
                [user],
                b"From: news@lists.example.com\r\nSubject: Issue %d\r\n\r\n" % i + body,
            )
    with smtplib.SMTP(server.host, server.submission_port, timeout=30) as client:
        client.starttls(context=tls_context())
        client.login("anna@example.org", PASSWORD)
        for to, subject in (
            ("jane.doe@partner.example", "Contract draft"),
            ("ops@partner.example", "Invoice 2026-11"),
            ("sam@partner.example", "Meeting notes"),
        ):
            client.sendmail(
                "anna@example.org",
                [to],
                f"From: anna@example.org\r\nTo: {to}\r\nSubject: {subject}\r\n\r\nHello\r\n".encode(),
            )


def queue_attempts(server: KarteroServer) -> int:
    store = server.store()
    try:
        return min((r.attempts for e in store.queue.queue_entries() for r in e.recipients), default=0)
    finally:
        store.close()


def chromium() -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for argument in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
    ):
        options.add_argument(argument)
    return webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)


def shoot(driver: Any, url: str, path: Path, size: tuple[int, int], wait_for_id: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    width, height = size
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600},
    )
    driver.get(url)
    WebDriverWait(driver, 30).until(ec.presence_of_element_located((By.ID, wait_for_id)))
    driver.save_screenshot(str(path))
    print(f"{path} ({path.stat().st_size // 1024} KiB)")


def sign_in(driver: Any, base: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get(base + "/admin/login")
    driver.find_element(By.NAME, "address").send_keys(ADMIN)
    driver.find_element(By.NAME, "password").send_keys(PASSWORD)
    driver.find_element(By.CSS_SELECTOR, "form button[type=submit]").click()
    WebDriverWait(driver, 30).until(ec.presence_of_element_located((By.CSS_SELECTOR, "form.logout")))


def sample_buckets(now: float) -> list[Any]:
    """A day of made-up hourly counts with a daytime hump, for the chart until the trace provides them."""
    from kartero.web.chart import Bucket

    start = int(now // 3600 * 3600) - 23 * 3600
    buckets = []
    for i in range(24):
        hour = time.gmtime(start + i * 3600).tm_hour
        level = 1 + math.sin(math.pi * max(0, hour - 6) / 14) if 6 <= hour <= 20 else 0.6
        received = int(40 * level + (i * 7) % 9)
        buckets.append(
            Bucket(start + i * 3600, received, int(received * 0.93), int(received * 0.05) + (i % 3), (i * 5) % 7 // 5)
        )
    return buckets


class InProcessAdmin:
    """The web admin over the stopped server's store, served from this process with sample activity."""

    def __init__(self, server: KarteroServer) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.stop_event: asyncio.Event | None = None
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._serve(),), daemon=True)

    def __enter__(self) -> InProcessAdmin:
        self.thread.start()
        self.ready.wait(30)
        return self

    def __exit__(self, *_: object) -> None:
        assert self.stop_event is not None
        self.loop.call_soon_threadsafe(self.stop_event.set)
        self.thread.join(30)

    async def _serve(self) -> None:
        from kartero.auth.accounts import Authenticator, Directory
        from kartero.concurrency import Blocking
        from kartero.config import ListenAddress, load
        from kartero.store.backends import open_store
        from kartero.tls import certificate_expiry
        from kartero.web.app import build_app
        from kartero.web.context import WebContext
        from kartero.web.listen import HttpServer
        from kartero.web.ops import Operations

        config = load(self.server.config)
        store = open_store(config.data_dir)
        now = time.time()
        cert = config.tls.cert if config.tls is not None else None
        ctx = WebContext(
            config=config,
            store=store,
            ops=Operations(config, store, Directory(store.accounts, config.domains)),
            authenticator=Authenticator(store.accounts),
            blocking=Blocking(),
            connections=lambda: {"smtp": 7, "submission": 2, "imap": 23, "pop3": 0, "managesieve": 0, "http": 1},
            certificate_expiry=lambda: certificate_expiry(cert) if cert else None,
            activity=lambda: sample_buckets(now),
            started_at=now - 3 * 86400 - 5 * 3600,
        )
        http = HttpServer(build_app(ctx), None)
        await http.start()
        await http.listen("http", ListenAddress(self.server.host, self.server.http_port), None, reuse_port=False)
        self.stop_event = asyncio.Event()
        self.ready.set()
        await self.stop_event.wait()
        await http.stop()
        store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    with (
        tempfile.TemporaryDirectory() as tmp,
        LoopbackDNS(ZONE) as dns,
        StubMX(b"451 4.7.1 Greylisted: please try again in 5 minutes") as stub,
    ):
        server = KarteroServer(
            Path(tmp) / "k",
            domains=("example.org", "example.net"),
            hostname="mail.example.org",
            http=True,
            extra_config=dns.config + f'[routes]\n"partner.example" = "{stub.host}:{stub.port}"\n',
        )
        populate(server)
        server.start()
        driver = chromium()
        try:
            send_mail(server)
            wait_for(lambda: queue_attempts(server) >= 1, 30)
            base = server.http_url
            sign_in(driver, base)
            shoot(driver, base + "/admin/accounts", args.out / "admin-accounts.png", DESKTOP, "accounts")
            shoot(driver, base + "/admin/queue", args.out / "admin-queue.png", DESKTOP, "queue")
            shoot(driver, base + "/admin/trace?address=jane.doe%40partner.example", args.out / "admin-trace.png",
                  DESKTOP, "trace-results")  # fmt: skip
            shoot(
                driver,
                base + "/admin/domains/check?domain=example.org",
                args.out / "admin-domains.png",
                DESKTOP,
                "dns-check",
            )
            assert server.stop() == 0, server.log
            with InProcessAdmin(server):
                shoot(driver, base + "/admin/", args.out / "admin-dashboard.png", DESKTOP, "queue-size")
                shoot(driver, base + "/admin/", args.out / "admin-phone.png", PHONE, "queue-size")
        finally:
            driver.quit()
            if server.process and server.process.poll() is None:
                server.stop()


if __name__ == "__main__":
    main()
