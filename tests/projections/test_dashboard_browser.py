"""The dashboard in a real browser (Debian's headless Chromium driven by Playwright) against a
projections service on a real port with seeded data: the charts show the seeded counts, a
filter changes them, and a screenshot is kept."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from playwright.async_api import Page, async_playwright

from services.projections.main import create_app
from shared.settings import Settings
from tests.harness import free_port, wait_for
from tests.projections.conftest import make_keys
from tests.projections.logdata import LogWriter, alert, classified, report

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]

# country -> [(group, year, act)]: TH 5, KG 3, TR 1
SEED = {
    "TH": [
        ("uyghur", 2023, "kidnapping"),
        ("uyghur", 2024, "kidnapping"),
        ("uyghur", 2024, "family_threatened"),
        ("dissident", 2024, "kidnapping"),
        ("dissident", 2022, "interpol_red_notice"),
    ],
    "KG": [
        ("uyghur", 2023, "family_threatened"),
        ("uyghur", 2024, "family_threatened"),
        ("dissident", 2024, "online_threat"),
    ],
    "TR": [("uyghur", 2024, "kidnapping")],
}


@pytest.fixture(scope="module")
async def served(module_settings: Settings) -> AsyncIterator[tuple[str, dict[str, str]]]:
    """The projections service on a real port (the browser needs one), with seeded data."""
    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(module_settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    task = asyncio.create_task(server.serve())
    keys = await make_keys(module_settings)
    n = 0
    async with LogWriter(module_settings) as log:
        for country, rows in SEED.items():
            for group, year, act in rows:
                n += 1
                incident = report(n, country=country, group=group, occurred_on=date(year, 3, 1), acts=(act,))
                await log.reported(incident)
                await log.classified(classified(incident))
        await log.alert(alert("fp-browser", "open", target_ref="tgt-000001"))
    import httpx

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:

        async def applied() -> bool:
            r = await client.get("/v1/projections/status", headers={"authorization": f"Bearer {keys['ngo_a']}"})
            return r.status_code == 200 and r.json()["events_applied"] == 2 * n + 1

        await wait_for(applied, timeout=90, what="seeded events applied")
    yield f"http://127.0.0.1:{port}", keys
    server.should_exit = True
    await task


async def _chart(page: Page, canvas: str) -> dict[str, Any]:
    data: dict[str, Any] = await page.evaluate(
        """id => { const c = Chart.getChart(id);
                   return { labels: c.data.labels,
                            datasets: c.data.datasets.map(d => ({ label: d.label, data: d.data })) }; }""",
        canvas,
    )
    return data


async def _use_key(page: Page, key: str) -> None:
    await page.fill("#api-key", key)
    await page.click("#key-form button[type=submit]")
    await page.wait_for_selector("body[data-state=ready]")


async def test_dashboard_shows_seeded_counts_and_filters(served: tuple[str, dict[str, str]], tmp_path: Path) -> None:
    url, keys = served
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1500})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on("requestfailed", lambda req: errors.append(f"failed: {req.url}"))
            await page.goto(f"{url}/dashboard")
            await page.wait_for_selector("body[data-state=needs-key]")
            await _use_key(page, keys["ngo_a"])

            country = await _chart(page, "chart-country")
            assert country["labels"] == ["TH", "KG", "TR"]  # ranked
            assert country["datasets"][0]["data"] == [5, 3, 1]
            assert await page.text_content("#total-incidents") == "9"
            method = await _chart(page, "chart-method")
            assert method["labels"] == ["2022", "2023", "2024"]
            by_method = {d["label"]: d["data"] for d in method["datasets"]}
            assert by_method == {"co_opting": [1, 0, 0], "direct_attack": [0, 1, 3], "threat_from_distance": [0, 1, 3]}
            ir = {d["label"]: d["data"] for d in (await _chart(page, "chart-ir"))["datasets"]}
            assert ir == {"IR1": [0, 1, 2], "IR2": [0, 0, 1], "IR3": [0, 1, 3], "no IR category": [1, 0, 0]}
            assert await page.locator("#alerts-table tbody tr").count() == 1
            assert "Kidnapping reported" in (await page.text_content("#alerts-table tbody") or "")
            await page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)

            # Filters: dissidents in 2024 only.
            await page.check("#group-options input[value=dissident]")
            await page.select_option("#year-from", "2024")
            await page.select_option("#year-to", "2024")
            await page.click("#apply-filters")
            await page.wait_for_selector("body[data-state=ready]")
            filtered = await _chart(page, "chart-country")
            assert filtered["labels"] == ["KG", "TH"] or filtered["labels"] == ["TH", "KG"]
            assert filtered["datasets"][0]["data"] == [1, 1]
            assert await page.text_content("#total-incidents") == "2"

            # A target's timeline from the open alert.
            await page.click("#alerts-table tbody a")
            await page.wait_for_selector("#timeline li")
            assert "kidnapping" in (await page.text_content("#timeline") or "")
            await page.screenshot(path=str(tmp_path / "dashboard-filtered.png"), full_page=True)
            assert errors == []
            print(f"screenshots: {tmp_path}")
        finally:
            await browser.close()


async def test_dashboard_hides_small_groups_from_keys_without_incidents_read(
    served: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    url, keys = served
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1400, "height": 1500})
            await page.goto(f"{url}/dashboard")
            await _use_key(page, keys["public"])
            country = await _chart(page, "chart-country")
            # TR (1) is under k; KG (3) goes too, or TR = total - TH - KG would give it away.
            assert country["labels"] == ["TH", "KG (hidden)", "TR (hidden)"]
            assert country["datasets"][0]["data"] == [5, 0, 0]
            assert await page.text_content("#total-incidents") == "9"
            assert await page.is_visible("#suppression-note")
            assert "may not read alerts" in (await page.text_content("#alerts-note") or "")
            await page.screenshot(path=str(tmp_path / "dashboard-public.png"), full_page=True)
        finally:
            await browser.close()
