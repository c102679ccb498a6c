"""`smlearn view --run RUN [--out FILE.html]`: one self-contained static HTML page to browse a run.

No server and no network: the run's data is embedded as JSON in the page and rendered by a small inline
script (plots as base64 PNG). The page shows

- the accuracy table (eval/metrics.json), the reward model's and the collection's numbers, the plots;
- every training question with its rationales grouped by level (high / mid / low): the hint each was
  written for, the hint-free final answer and the RM score (rm/scores.jsonl) where the rationale was in a
  preference pair;
- the test questions that SFT → RL fixed and broke, both completions side by side;
- search (question or rationale text) and filters by level and task; 20 questions per page, so a run
  with 10k rationales opens in about a second.

Only files are read: the page can be made while another process writes the run (it shows what exists).
"""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from .collect.levels import LEVEL_NAMES
from .errors import SmlearnError
from .io import read_json, read_jsonl
from .rundir import MODEL_LABELS


def _jsonl(path: Path) -> list[dict[str, Any]]:
    return read_jsonl(path) if path.exists() else []


def _json(path: Path) -> Any:
    return read_json(path) if path.exists() else None


def _task_of(ids: list[str]) -> dict[str, str]:
    """A task per question id: the id's prefix before the first "-" when ids have few distinct prefixes (the
    lab's "arithmetic-train-..."), else one task for all."""
    prefixes = {i: i.split("-", 1)[0] if "-" in i else "" for i in ids}
    distinct = set(prefixes.values())
    if "" in distinct or not 1 < len(distinct) <= 12:
        return {i: "all" for i in ids}
    return prefixes


def _questions(root: Path, split: str) -> dict[str, dict[str, Any]]:
    """id → {question, answer} of a split ("rm": generate.rm_split's), when the run's data can still be read."""
    try:
        from .config import load_config
        from .data import load_split

        config = load_config(root / "config.yaml")
        if split == "rm":           # the reward model's own questions (generate.rm_split), if any
            if not (config.generate.rm_split and config.generate.rm_questions):
                return {}
            split = config.generate.rm_split
        return {e.id: {"question": e.question, "answer": e.answer} for e in load_split(config.data, split)}
    except Exception:  # noqa: BLE001 - data moved, hub offline: the page shows the ids instead
        return {}


def collect_view_data(root: str | Path) -> dict[str, Any]:
    root = Path(root)
    if not (root / "manifest.json").exists() and not (root / "config.yaml").exists():
        raise SmlearnError(f"{root}: not a run directory (no manifest.json or config.yaml)")
    metrics = _json(root / "eval" / "metrics.json") or {}
    accuracy = [{"stage": MODEL_LABELS.get(s, s), "accuracy": m.get("accuracy"), "correct": m.get("correct"),
                 "total": m.get("total")} for s, m in metrics.items() if isinstance(m, dict) and "accuracy" in m]
    for model_dir in sorted((root / "eval").glob("*/metrics.json")) if (root / "eval").exists() else []:
        name = model_dir.parent.name
        if name not in metrics:
            m = read_json(model_dir)
            accuracy.append({"stage": MODEL_LABELS.get(name, name), "accuracy": m.get("accuracy"),
                             "correct": m.get("correct"), "total": m.get("total")})

    rm = _json(root / "rm" / "metrics.json") or {}
    stats = _json(root / "collect_stats.json") or {}
    summary = []
    for key, value in [("RM held-out pairwise accuracy", rm.get("heldout_accuracy")),
                       ("RM train pairwise accuracy", rm.get("train_accuracy")),
                       ("rationales judged", stats.get("rationales")), ("SFT examples", stats.get("sft_examples")),
                       ("preference pairs", stats.get("pairs"))]:
        if value is not None:
            summary.append([key, round(value, 4) if isinstance(value, float) else value])
    for name, n in (stats.get("levels") or {}).items():
        summary.append([f"{name} rationales", n])

    # Training questions and their rationales.
    judged = _jsonl(root / "judged.jsonl")
    score_of: dict[str, float] = {}
    for row in _jsonl(root / "rm" / "scores.jsonl"):
        for rid in row.get("rationale_ids") or []:
            score_of[rid] = row["score"]
    train_q = {**_questions(root, "rm"), **_questions(root, "train")} if judged else {}   # rm: the RM's own
    by_q: dict[str, list[dict[str, Any]]] = {}
    for r in judged:
        by_q.setdefault(r["question_id"], []).append(
            {"level": LEVEL_NAMES.get(r.get("level"), str(r.get("level"))), "source": r.get("source"),
             "hint": r.get("candidate"), "final": r.get("final_answer"), "ok": r.get("final_correct"),
             "score": score_of.get(r.get("id")), "text": r.get("text") or r.get("rationale") or ""})
    task = _task_of(list(by_q))
    order = {"high": 0, "mid": 1, "low": 2}
    train = []
    for qid, rats in by_q.items():
        rats.sort(key=lambda x: (order.get(x["level"], 3), -(x["score"] if x["score"] is not None else -1e9)))
        q = train_q.get(qid, {})
        train.append({"id": qid, "task": task[qid], "question": q.get("question", ""), "gold": q.get("answer"),
                      "rationales": rats})

    # Test questions: what RL changed relative to SFT.
    sft = {r["id"]: r for r in _jsonl(root / "eval" / "sft" / "predictions.jsonl")}
    rl = {r["id"]: r for r in _jsonl(root / "eval" / "rl" / "predictions.jsonl")}
    test_q = _questions(root, "test") if sft and rl else {}
    test_task = _task_of(list(sft))
    changes = []
    for qid, a in sft.items():
        b = rl.get(qid)
        if b is None or a.get("correct") == b.get("correct"):
            continue
        changes.append({"id": qid, "task": test_task.get(qid, "all"), "kind": "fixed" if b["correct"] else "broke",
                        "question": test_q.get(qid, {}).get("question", ""), "gold": a.get("gold"),
                        "sft": a.get("completion", ""), "sft_pred": a.get("prediction"),
                        "rl": b.get("completion", ""), "rl_pred": b.get("prediction")})

    plots = []
    for png in sorted((root / "plots").glob("*.png")) if (root / "plots").exists() else []:
        plots.append({"name": png.stem.replace("_", " "),
                      "src": "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode()})
    return {"run": root.resolve().name, "accuracy": accuracy, "summary": summary, "plots": plots,
            "train": train, "changes": changes,
            "tasks": sorted({q["task"] for q in train} | {c["task"] for c in changes})}


def render_html(data: dict[str, Any]) -> str:
    # "</" inside the JSON would end the script element early.
    blob = json.dumps(data, ensure_ascii=False).replace("</", "<\\/").replace("<!--", "<\\!--")
    return _TEMPLATE.replace("__TITLE__", html.escape(f"smlearn run: {data['run']}")).replace("__DATA__", blob)


def write_view(run: str | Path, out: str | Path | None = None) -> Path:
    """Write the run's HTML page (default <run>/view.html); returns its path."""
    root = Path(run)
    out = Path(out) if out is not None else root / "view.html"
    text = render_html(collect_view_data(root))
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(out)
    return out


_TEMPLATE = r"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>__TITLE__</title>
<style>
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",sans-serif;margin:0;color:#1d2329;background:#f6f7f9}
header{background:#24303c;color:#fff;padding:10px 20px}header h1{font-size:18px;margin:0}
main{max-width:1200px;margin:0 auto;padding:12px 20px}
section{background:#fff;border:1px solid #dde1e6;border-radius:6px;padding:10px 16px;margin:12px 0}
h2{font-size:16px;margin:4px 0 10px}
table{border-collapse:collapse}td,th{border:1px solid #dde1e6;padding:3px 10px;text-align:left}
th{background:#eef1f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.plots{display:flex;flex-wrap:wrap;gap:10px}.plots figure{margin:0}.plots img{max-width:380px;border:1px solid #dde1e6}
.controls{display:flex;flex-wrap:wrap;gap:8px;align-items:center;margin-bottom:8px}
.controls input[type=search]{width:260px;padding:3px 6px}
.q{border-top:1px solid #e4e7eb;padding:8px 0}.q .qt{font-weight:600;white-space:pre-wrap}
.meta{color:#5b6570;font-size:12px}
.group{margin:4px 0 4px 12px}.group h4{margin:6px 0 2px;font-size:13px}
.rat{border-left:4px solid #ccc;padding:3px 8px;margin:3px 0;background:#fafbfc}
.rat pre,.side pre{white-space:pre-wrap;margin:2px 0;font:12.5px/1.4 ui-monospace,Menlo,Consolas,monospace}
.lv-high{border-color:#2e9d55}.lv-mid{border-color:#d9a400}.lv-low{border-color:#cf4b4b}
.tag{display:inline-block;border-radius:3px;padding:0 5px;font-size:11.5px;margin-right:4px;background:#e8ecf0}
.ok{background:#d6f2de}.bad{background:#f8dada}
.pair{display:grid;grid-template-columns:1fr 1fr;gap:8px}.side{background:#fafbfc;border:1px solid #e4e7eb;padding:4px 8px}
.pager{margin:8px 0}.pager button{margin-right:4px}
</style></head>
<body>
<header><h1>__TITLE__</h1></header>
<main>
<section id="accuracy"><h2>Test accuracy</h2><table id="acc-table"><thead><tr><th>model</th><th>accuracy</th><th>correct / total</th></tr></thead><tbody></tbody></table>
<h2 style="margin-top:14px">Collection and reward model</h2><table id="summary-table"><tbody></tbody></table></section>
<section id="plots-section"><h2>Plots</h2><div class="plots" id="plots"></div></section>
<section id="train-section"><h2>Training questions and their rationales</h2>
<div class="controls"><input type="search" id="train-search" placeholder="search questions and rationales">
<label>level <select id="train-level"><option value="">all</option><option>high</option><option>mid</option><option>low</option></select></label>
<label>task <select id="train-task" class="task-select"><option value="">all</option></select></label>
<span class="meta" id="train-count"></span></div>
<div class="pager" id="train-pager-top"></div><div id="train-list"></div><div class="pager" id="train-pager"></div></section>
<section id="test-section"><h2>Test questions SFT &rarr; RL changed</h2>
<div class="controls"><input type="search" id="test-search" placeholder="search questions and completions">
<label>show <select id="test-kind"><option value="">fixed and broke</option><option value="fixed">fixed</option><option value="broke">broke</option></select></label>
<label>task <select id="test-task" class="task-select"><option value="">all</option></select></label>
<span class="meta" id="test-count"></span></div>
<div class="pager" id="test-pager-top"></div><div id="test-list"></div><div class="pager" id="test-pager"></div></section>
</main>
<script id="run-data" type="application/json">__DATA__</script>
<script>
"use strict";
const D = JSON.parse(document.getElementById("run-data").textContent);
const PAGE = 20;
function el(tag, attrs, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) { if (k === "class") e.className = v; else e.setAttribute(k, v); }
  for (const k of kids) if (k !== null && k !== undefined) e.append(k instanceof Node ? k : String(k));
  return e;
}
function fmt(x, d) { return (x === null || x === undefined) ? "\u2014" : (typeof x === "number" ? x.toFixed(d) : String(x)); }

const accBody = document.querySelector("#acc-table tbody");
for (const a of D.accuracy) accBody.append(el("tr", {}, el("td", {}, a.stage), el("td", {class: "num"}, fmt(a.accuracy, 4)),
                                             el("td", {class: "num"}, `${a.correct} / ${a.total}`)));
if (!D.accuracy.length) accBody.append(el("tr", {}, el("td", {colspan: 3}, "not evaluated yet")));
const sumBody = document.querySelector("#summary-table tbody");
for (const [k, v] of D.summary) sumBody.append(el("tr", {}, el("th", {}, k), el("td", {class: "num"}, v)));
const plots = document.getElementById("plots");
for (const p of D.plots) plots.append(el("figure", {}, el("img", {src: p.src, alt: p.name}), el("figcaption", {class: "meta"}, p.name)));
if (!D.plots.length) document.getElementById("plots-section").style.display = "none";
for (const s of document.querySelectorAll(".task-select")) for (const t of D.tasks) s.append(el("option", {}, t));

function pager(ids, n, page, go) {
  for (const id of ids) {
    const box = document.getElementById(id); box.textContent = "";
    const pages = Math.max(1, Math.ceil(n / PAGE));
    if (pages === 1) continue;
    const prev = el("button", {}, "\u2039 prev"), next = el("button", {}, "next \u203a");
    prev.disabled = page === 0; next.disabled = page >= pages - 1;
    prev.onclick = () => go(page - 1); next.onclick = () => go(page + 1);
    box.append(prev, next, el("span", {class: "meta"}, ` page ${page + 1} of ${pages}`));
  }
}

let trainPage = 0;
function trainFiltered() {
  const q = document.getElementById("train-search").value.toLowerCase();
  const level = document.getElementById("train-level").value, task = document.getElementById("train-task").value;
  const out = [];
  for (const item of D.train) {
    if (task && item.task !== task) continue;
    let rats = level ? item.rationales.filter(r => r.level === level) : item.rationales;
    if (level && !rats.length) continue;
    if (q && !(item.question.toLowerCase().includes(q) || item.id.toLowerCase().includes(q))) {
      rats = rats.filter(r => r.text.toLowerCase().includes(q));
      if (!rats.length) continue;
    }
    out.push([item, rats]);
  }
  return out;
}
function renderTrain(page) {
  const items = trainFiltered();
  trainPage = Math.min(page, Math.max(0, Math.ceil(items.length / PAGE) - 1));
  const list = document.getElementById("train-list"); list.textContent = "";
  const nr = items.reduce((s, [, r]) => s + r.length, 0);
  document.getElementById("train-count").textContent = `${items.length} questions, ${nr} rationales`;
  for (const [item, rats] of items.slice(trainPage * PAGE, trainPage * PAGE + PAGE)) {
    const box = el("div", {class: "q"}, el("div", {class: "qt"}, item.question || item.id),
                   el("div", {class: "meta"}, `${item.id} \u00b7 task ${item.task}` + (item.gold != null ? ` \u00b7 gold answer ${item.gold}` : "")));
    for (const lv of ["high", "mid", "low"]) {
      const group = rats.filter(r => r.level === lv);
      if (!group.length) continue;
      const g = el("div", {class: "group"}, el("h4", {}, `${lv} (${group.length})`));
      for (const r of group) {
        g.append(el("div", {class: `rat lv-${lv}`},
          el("div", {},
             el("span", {class: "tag"}, r.source),
             el("span", {class: "tag"}, r.hint === null || r.hint === undefined ? "no hint (free)" : `hint: ${r.hint}`),
             el("span", {class: "tag " + (r.ok ? "ok" : "bad")}, `hint-free answer: ${fmt(r.final, 0)}`),
             el("span", {class: "tag"}, `RM score: ${fmt(r.score, 3)}`)),
          el("pre", {class: "rationale"}, r.text)));
      }
      box.append(g);
    }
    list.append(box);
  }
  pager(["train-pager-top", "train-pager"], items.length, trainPage, renderTrain);
}

let testPage = 0;
function renderTest(page) {
  const q = document.getElementById("test-search").value.toLowerCase();
  const kind = document.getElementById("test-kind").value, task = document.getElementById("test-task").value;
  const items = D.changes.filter(c => (!kind || c.kind === kind) && (!task || c.task === task) &&
      (!q || (c.question + "\n" + c.sft + "\n" + c.rl + "\n" + c.id).toLowerCase().includes(q)));
  testPage = Math.min(page, Math.max(0, Math.ceil(items.length / PAGE) - 1));
  const nf = D.changes.filter(c => c.kind === "fixed").length;
  document.getElementById("test-count").textContent = `${items.length} shown \u00b7 RL fixed ${nf}, broke ${D.changes.length - nf}`;
  const list = document.getElementById("test-list"); list.textContent = "";
  for (const c of items.slice(testPage * PAGE, testPage * PAGE + PAGE)) {
    list.append(el("div", {class: "q"},
      el("div", {}, el("span", {class: "tag " + (c.kind === "fixed" ? "ok" : "bad")}, c.kind), el("span", {class: "qt"}, c.question || c.id)),
      el("div", {class: "meta"}, `${c.id} \u00b7 task ${c.task} \u00b7 gold answer ${c.gold}`),
      el("div", {class: "pair"},
         el("div", {class: "side"}, el("div", {class: "meta"}, `SFT \u2192 ${fmt(c.sft_pred, 0)}`), el("pre", {}, c.sft)),
         el("div", {class: "side"}, el("div", {class: "meta"}, `RL \u2192 ${fmt(c.rl_pred, 0)}`), el("pre", {}, c.rl)))));
  }
  if (!D.changes.length) list.append(el("p", {class: "meta"}, "no SFT and RL evaluations to compare, or RL changed no answer"));
  pager(["test-pager-top", "test-pager"], items.length, testPage, renderTest);
}
for (const id of ["train-search", "train-level", "train-task"]) document.getElementById(id).addEventListener("input", () => renderTrain(0));
for (const id of ["test-search", "test-kind", "test-task"]) document.getElementById(id).addEventListener("input", () => renderTest(0));
renderTrain(0); renderTest(0);
document.body.setAttribute("data-rendered", "1");
</script>
</body></html>
"""
