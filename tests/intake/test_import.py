"""``tnrwatch import``: a partner's backlog through intake's validation, with a summary of
accepted, duplicate and rejected rows (each rejection with its reason)."""

from __future__ import annotations

import asyncio
import csv
import json
import os
import sys
from pathlib import Path

import httpx

from cli.importer import read_rows, run_import
from shared.settings import Settings
from tests.harness import ROOT, ServiceProcess, free_port
from tests.intake.conftest import SOURCE, Keys, samples

COLUMNS = ["id", "subject", "occurred_on", "date_precision", "country", "city", "group", "nationality",
           "status_abroad", "name", "birth_date", "acts", "outcome", "source_url", "source_reliability",
           "source_credibility"]


def write_csv(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def csv_row(n: int, **overrides: str) -> dict[str, str]:
    row = {
        "id": f"csv-{n}", "subject": f"CSV-{n}", "occurred_on": "2023-03-0" + str(1 + n % 9),
        "date_precision": "day", "country": "TR", "city": "Istanbul", "group": "uyghur", "nationality": "CN",
        "status_abroad": "refugee", "name": f"Person Csv{n}", "birth_date": "1980-01-01",
        "acts": "detention_abroad|2023-03-01|host_police|carried_out;"
                "extradition_request|2023-03-02|prc_government|pending",
        "outcome": "detained", "source_url": "https://example.org/r", "source_reliability": "B",
        "source_credibility": "2",
    }
    row.update(overrides)
    return row


async def test_import_reports_accepted_duplicate_and_rejected_rows(
    intake: httpx.AsyncClient, keys: Keys, tmp_path: Path
) -> None:
    path = write_csv(tmp_path / "backlog.csv", [
        csv_row(1), csv_row(2), csv_row(3, country="XX"), csv_row(4, acts="[not json"),
        csv_row(5, acts="kidnaping|2023-03-01|prc_mss|carried_out"), csv_row(6, id=""),
    ])
    rows = read_rows(path, SOURCE)
    async with httpx.AsyncClient(transport=intake._transport, base_url="http://service",
                                 headers={"authorization": f"Bearer {keys.partner}"}) as client:
        summary = await run_import(client, rows, batch_size=2, quiet=True)
        assert (summary.accepted, summary.duplicates) == (3, 0)  # rows 1, 2 and 6 (derived id)
        reasons = dict(summary.rejected)
        assert set(reasons) == {"row 3 (id csv-3)", "row 4", "row 5 (id csv-5)"}
        assert "/data/location/country" in reasons["row 3 (id csv-3)"]
        assert "cannot read" in reasons["row 4"]
        assert "/data/acts/0/type" in reasons["row 5 (id csv-5)"]
        assert "Person Csv" not in json.dumps(summary.rejected)

        again = await run_import(client, read_rows(path, SOURCE), batch_size=100, quiet=True)
        assert (again.accepted, again.duplicates, len(again.rejected)) == (0, 3, 3)


async def test_the_tnrwatch_import_command_posts_a_jsonl_backlog(
    intake_settings: Settings, keys: Keys, tmp_path: Path
) -> None:
    events = samples()[:5]
    for event in events:
        event["id"] = "cli-" + event["id"]
    lines = [json.dumps(e) for e in events] + ["{not json", json.dumps({**events[0], "id": "cli-x", "type": "nope"})]
    path = tmp_path / "backlog.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    process = ServiceProcess("services.intake.main", intake_settings, free_port(), tmp_path / "intake.log")
    try:
        process.start()
        await process.wait_ready()
        command = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cli.main", "import", str(path), "--url", process.url, "--quiet",
            cwd=ROOT, env={**os.environ, "TNR_API_KEY": keys.partner},
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        out, err = await command.communicate()
    finally:
        process.terminate()
    text = out.decode()
    assert command.returncode == 1, (text, err.decode())  # some rows were rejected
    assert "accepted:   5" in text and "duplicates: 0" in text and "rejected:   2" in text
    assert "row 6: not JSON" in text
    assert "row 7 (id cli-x): /type" in text
