"""The example page (``examples/page/index.html``) in a real browser, headless Chromium driven by Playwright, against
each example under its real server (FastAPI under uvicorn, Django under gunicorn), with a real worker and Redis and
PostgreSQL: a like shows at once (the worker paused), survives a reload, and stays once applied; of two customers
reserving the last unit, one is told of the rejection within 2 s.

Chromium: Debian's ``chromium`` package (``make tools`` installs it), or Playwright's own browser. Without either,
the tests skip on a developer's machine and fail when CI is set. ``SEQPROC_TEST_SCREENSHOTS=docs`` writes the
screenshots the README shows (``docs/page-*.png``); otherwise they go to the test's temporary folder.
"""

from __future__ import annotations

import os
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

import seqproc
from seqproc.models.settings import Settings
from seqproc.worker.ops.inspect import article_state
from tests.conftest import ROOT, free_port, require, wait_for
from tests.integration.test_example_fastapi import Uvicorn

pytestmark = [pytest.mark.services, pytest.mark.timeout(180)]

# In CI a missing Playwright is an import error (a failure), never a skip.
playwright_api = (
    pytest.importorskip("playwright.sync_api")
    if not os.environ.get("CI")
    else __import__("playwright.sync_api", fromlist=["sync_api"])
)

ARTICLE, PRODUCT = 42, 7
#: How soon a customer must hear that their reservation was rejected.
TOLD_WITHIN_S = 2.0


def web_port() -> int:
    """A port for a web server: from ``SEQPROC_TEST_WEB_PORTS`` (``7400-7499``) when set, else any free one."""
    spec = os.environ.get("SEQPROC_TEST_WEB_PORTS")
    if not spec:
        return free_port()
    low, high = (int(part) for part in spec.split("-"))
    for port in range(low, high + 1):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise AssertionError(f"no free port in SEQPROC_TEST_WEB_PORTS={spec}")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    executable = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
    with playwright_api.sync_playwright() as driver:
        try:
            launched = driver.chromium.launch(
                executable_path=executable, headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"]
            )
        except playwright_api.Error as error:
            require(False, f"headless Chromium ({error})")
        yield launched
        launched.close()


@pytest.fixture
def shots(tmp_path: Path) -> Callable[[Any, str], None]:
    folder = os.environ.get("SEQPROC_TEST_SCREENSHOTS")
    where = ROOT / folder if folder else tmp_path

    def shot(page: Any, name: str) -> None:
        page.screenshot(path=str(where / f"page-{name}.png"), full_page=True)

    return shot


def check_page(
    base: str, browser: Any, engine: Engine, start: Callable[[], Any], shot: Callable[[Any, str], None]
) -> None:
    """The page's promises, against a server at ``base`` whose worker ``start()`` starts (none runs before)."""
    expect = playwright_api.expect
    page = browser.new_page(viewport={"width": 720, "height": 760})
    page.goto(f"{base}/page?user=1&article={ARTICLE}&product={PRODUCT}")
    expect(page.locator("#like-count")).to_have_text("0")

    page.click("#like")  # no worker runs: the count rises from the response's preview
    expect(page.locator("#like-count")).to_have_text("1", timeout=2000)
    expect(page.locator("#like")).to_have_text("Unlike")
    assert article_state_of(engine) == 0  # not applied yet
    shot(page, "liked-before-the-worker")
    page.reload()
    expect(page.locator("#like-count")).to_have_text("1")
    expect(page.locator("#article-pending")).to_have_text("(1 pending)")

    start()  # the worker applies it; the count stays
    wait_for(lambda: article_state_of(engine) == 1, 30, "the like applied")
    page.reload()
    expect(page.locator("#like-count")).to_have_text("1")
    expect(page.locator("#article-pending")).to_have_text("")
    expect(page.locator("#like")).to_have_text("Unlike")

    # The last unit, reserved by two customers at once: one is told it was sold out.
    seqproc.restock(PRODUCT, 1).wait(timeout_s=30)
    pages = []
    for user in (2, 3):
        customer = browser.new_context(viewport={"width": 720, "height": 760}).new_page()
        customer.goto(f"{base}/page?user={user}&article={ARTICLE}&product={PRODUCT}")
        expect(customer.locator("#available")).to_have_text("1")
        pages.append(customer)
    clicked = time.monotonic()
    for customer in pages:
        customer.click("#reserve")
    told = "li.rejected:has-text('sold out: your reservation was released')"

    def one_told() -> bool:
        return sum(customer.locator(told).count() for customer in pages) == 1

    wait_for(one_told, TOLD_WITHIN_S * 5, "a customer told of the rejection", interval_s=0.02)
    assert time.monotonic() - clicked <= TOLD_WITHIN_S
    loser = next(customer for customer in pages if customer.locator(told).count())
    winner = next(customer for customer in pages if customer is not loser)
    expect(loser.locator("#reserve-state")).to_contain_text("sold out")
    expect(winner.locator("#reserve-state")).to_contain_text("reserved")
    expect(winner.locator("#available")).to_have_text("0")
    shot(winner, "reserved")
    shot(loser, "sold-out")
    time.sleep(0.5)  # no second notification of the same rejection
    assert loser.locator(told).count() == 1
    for customer in pages:
        customer.context.close()
    page.close()


def article_state_of(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(article_state(conn, ARTICLE)["like_count"])


def test_the_fastapi_page_in_a_browser(
    clean: Settings, engine: Engine, start_worker, browser: Any, shots, tmp_path: Path
) -> None:
    server = Uvicorn(clean, tmp_path, workers=2, port=web_port())
    try:
        server.wait_ready()
        check_page(server.url, browser, engine, lambda: start_worker(clean), shots)
    finally:
        server.stop()


def test_the_django_page_in_a_browser(
    clean: Settings, engine: Engine, start_worker, browser: Any, tmp_path: Path
) -> None:
    pytest.importorskip("gunicorn")
    from tests.integration.django_example import serve_shop

    def unshot(page: Any, name: str) -> None:  # the same page as FastAPI's: the README shows those
        page.screenshot(path=str(tmp_path / f"page-{name}.png"))

    with serve_shop(clean, tmp_path / "gunicorn.log", port=web_port(), workers=2) as url:
        check_page(url, browser, engine, lambda: start_worker(clean), unshot)
