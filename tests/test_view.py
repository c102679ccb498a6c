"""`smlearn view` (issue 12): one self-contained HTML page per run, rendered in headless Chromium."""
from __future__ import annotations

import html
import shutil
import subprocess
import time
from pathlib import Path

import pytest

import smlearn
from smlearn.cli import main
from smlearn.io import read_jsonl, write_jsonl
from smlearn.view import collect_view_data, write_view

from conftest import bench, tiny_config, write_slice


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        if path := shutil.which(name):
            return path
    pytest.skip("headless Chromium not found (Debian: apt-get install chromium; scripts/setup.sh installs it "
                "where it can)")


def _render(page: Path, tmp_path: Path) -> tuple[str, Path]:
    """The DOM after the page's scripts ran, and a screenshot, from headless Chromium (no network)."""
    chrome = _chromium()
    common = [chrome, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
              f"--user-data-dir={tmp_path / 'chrome-profile'}", "--window-size=1280,1600"]
    dom = subprocess.run([*common, "--virtual-time-budget=5000", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    shot = tmp_path / "view.png"
    subprocess.run([*common, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=120)
    return dom, shot


@pytest.fixture(scope="module")
def view_run(tmp_path_factory, tiny_base):
    data = write_slice(bench("multiarith"), tmp_path_factory.mktemp("view-data"), 8, 6)
    out = tmp_path_factory.mktemp("view-run") / "run"
    smlearn.run(tiny_config(tiny_base, data, "multiarith"), out, progress=False)
    return out


def test_view_data_has_every_rationale_with_level_hint_answer_and_score(view_run):
    data = collect_view_data(view_run)
    judged = read_jsonl(view_run / "judged.jsonl")
    assert sum(len(q["rationales"]) for q in data["train"]) == len(judged)
    assert {a["stage"] for a in data["accuracy"]} == {"base", "SFT", "RL (SML)"}
    assert all(q["question"] for q in data["train"])            # question text from the run's data
    rats = [r for q in data["train"] for r in q["rationales"]]
    assert {r["level"] for r in rats} <= {"high", "mid", "low"}
    assert any(r["hint"] is not None for r in rats) and any(r["hint"] is None for r in rats)
    # Every rationale of a preference pair has its RM score (rm/scores.jsonl lists its id).
    in_pairs = {i for p in read_jsonl(view_run / "pairs.jsonl") for i in (p["chosen_id"], p["rejected_id"])}
    by_id = {r["id"]: r for r in judged}
    scored = [r for q in data["train"] for r in q["rationales"] if r["score"] is not None]
    assert len(scored) == len(in_pairs) > 0
    sft = {r["id"]: r for r in read_jsonl(view_run / "eval" / "sft" / "predictions.jsonl")}
    rl = {r["id"]: r for r in read_jsonl(view_run / "eval" / "rl" / "predictions.jsonl")}
    assert len(data["changes"]) == sum(sft[i]["correct"] != rl[i]["correct"] for i in sft)
    assert by_id


def test_view_page_in_headless_chromium(view_run, tmp_path, capsys):
    page = tmp_path / "run.html"
    assert main(["view", "--run", str(view_run), "--out", str(page)]) == 0
    assert capsys.readouterr().out.strip() == f"[smlearn] view: {page}"
    text = page.read_text()
    assert "http://" not in text and "https://" not in text      # self-contained: nothing to fetch
    dom, shot = _render(page, tmp_path)
    assert 'data-rendered="1"' in dom, dom[-2000:]
    # The accuracy table has its three rows; a rationale is on the page, with its level group.
    acc = dom[dom.index('id="acc-table"'):dom.index("</table>", dom.index('id="acc-table"'))]
    assert acc.count("<tr>") == 4 and "SFT" in acc and "RL (SML)" in acc
    first = read_jsonl(view_run / "judged.jsonl")[0]["text"]
    assert '<pre class="rationale">' in dom
    assert first.strip()[:60] in html.unescape(dom)
    assert shot.exists() and shot.stat().st_size > 20_000          # a rendered page, not a blank one


def test_view_of_a_10k_rationale_run_opens_fast(view_run, tmp_path):
    big = tmp_path / "big"
    shutil.copytree(view_run, big, ignore=shutil.ignore_patterns("model", "tb", "*.safetensors"))
    judged = read_jsonl(view_run / "judged.jsonl")
    rows = [{**r, "id": f"{r['id']}-{k}", "question_id": f"{r['question_id']}-{k // 4}"}
            for k in range(10_000 // len(judged) + 1) for r in judged][:10_000]
    write_jsonl(big / "judged.jsonl", rows)
    t0 = time.monotonic()
    page = write_view(big)
    assert time.monotonic() - t0 < 10
    assert page == big / "view.html"
    t0 = time.monotonic()
    dom, _ = _render(page, tmp_path)
    assert time.monotonic() - t0 < 30                             # the browser, twice (DOM and screenshot)
    assert "10000 rationales" in dom
    assert dom.count('<pre class="rationale">') < 500              # one page of questions is in the DOM
