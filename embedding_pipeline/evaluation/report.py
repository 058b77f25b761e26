"""Eval reports as files: a Markdown table, a PNG plot and a JSON artifact.

The plot has recall@k curves of both spaces (known-item recall on unlabeled sets sampled from
the source, overlap@k otherwise) and, per query, who won: the candidate's nDCG@10 minus the
active's on labeled sets, the distribution of overlap@10 on unlabeled ones. Reports carry ids
and numbers only, never query or document text (sampled queries are document text).
"""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers
import matplotlib.pyplot as plt  # noqa: E402

CURVE_KS = (1, 3, 5, 10, 100)
ROWS = [("nDCG@10", "ndcg@10"), ("recall@10", "recall@10"), ("recall@100", "recall@100"), ("MRR@10", "mrr@10"),
        ("MAP@100", "map@100"), ("known-item MRR@10", "known_item_mrr@10"),
        ("known-item recall@10", "known_item_recall@10"), ("HNSW recall@10 vs exact", "ann_recall@10"),
        ("coverage", "coverage")]


def _fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4f}"
    return str(v)


def _delta(a, b) -> str:
    if not isinstance(a, (int, float)) or not isinstance(b, (int, float)) or isinstance(a, bool):
        return ""
    return f"{b - a:+.4f}"


def _verdict(result: dict) -> str:
    passed = result.get("gate_passed")
    word = "no verdict" if passed is None else ("PASSED" if passed else "FAILED")
    return f"**Gate: {word}** — {result.get('gate_reason', '')}"


def markdown(result: dict, image: str | None = None) -> str:
    """The report as Markdown; ``image`` (a relative path or a data URI) is embedded when given."""
    m = result["metrics"]
    act, cand = m["active"], m.get("candidate")
    if cand is not None:
        title = (f"### Shadow eval of `{result['source']}`: `{result['active']}` (active) "
                 f"vs `{result['candidate']}` (candidate)")
    else:
        title = f"### Eval of the active space `{result['active']}` on `{result['source']}`"
    judged = act.get("queries")
    lines = [title, "",
             f"Eval set `{result['eval_set']}` ({result['kind']}, {m.get('queries', judged)} queries"
             + (f", {judged} judged" if result["kind"] == "labeled" else "")
             + f"), {act.get('eligible', '?')} eligible rows, exact top-{result['k']} search.", "",
             _verdict(result), ""]
    header = f"| metric | `{act['space']}` (active) |"
    sep = "|---|---:|"
    if cand is not None:
        header += f" `{cand['space']}` (candidate) | Δ |"
        sep += "---:|---:|"
    lines += [header, sep]
    for label, key in ROWS:
        if key not in act and (cand is None or key not in cand):
            continue
        row = f"| {label} | {_fmt(act.get(key))} |"
        if cand is not None:
            row += f" {_fmt(cand.get(key))} | {_delta(act.get(key), cand.get(key))} |"
        lines.append(row)
    if cand is not None:
        ag = m["agreement"]
        lines += ["", f"- Agreement of the two rankings: overlap@10 (Jaccard) {_fmt(ag.get('overlap@10'))}, "
                      f"overlap@100 {_fmt(ag.get('overlap@100'))}, "
                      f"Kendall τ-b @10 {_fmt(ag.get('rank_correlation@10'))}."]
        if m.get("per_query"):
            pq = m["per_query"]
            lines.append(f"- Per query ({pq['key']}): candidate better on {pq['wins']}, worse on {pq['losses']}, "
                         f"tied on {pq['ties']}.")
    if image:
        lines += ["", f"![recall@k and per-query results]({image})"]
    return "\n".join(lines) + "\n"


def _curves(result: dict) -> tuple[str, dict[str, list[float]]]:
    m = result["metrics"]
    roles = [r for r in ("active", "candidate") if m.get(r)]
    if result["kind"] == "labeled":
        return "recall@k", {f"{m[r]['space']} ({r})": [m[r].get(f"recall@{k}", 0.0) for k in CURVE_KS] for r in roles}
    if "known_item_recall@10" in m["active"]:
        return "known-item recall@k", {
            f"{m[r]['space']} ({r})": [m[r].get(f"known_item_recall@{k}", math.nan) for k in CURVE_KS] for r in roles}
    ag = m.get("agreement", {})
    return "overlap@k (Jaccard)", {"active vs candidate": [ag.get(f"overlap@{k}", math.nan) for k in CURVE_KS]}


def plot(result: dict, path: Path) -> Path:
    """recall@k curves of both spaces (left) and the per-query outcome (right), as a PNG."""
    pq = result.get("per_query", {})
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4), dpi=90)
    label, curves = _curves(result)
    # Distinct markers and dashes: equal curves must still show that both spaces are there.
    for (name, ys), style in zip(curves.items(), [("o", "-", 7), ("s", "--", 4)]):
        left.plot(CURVE_KS, ys, marker=style[0], linestyle=style[1], markersize=style[2], label=name)
    left.set_xscale("log")
    left.set_xticks(CURVE_KS, [str(k) for k in CURVE_KS])
    left.set_ylim(0, 1.02)
    left.set_xlabel("k")
    left.set_title(label, fontsize=10)
    left.legend(fontsize=8, loc="lower right")
    left.grid(alpha=0.3)
    deltas = sorted(v["delta_ndcg@10"] for v in pq.values() if "delta_ndcg@10" in v)
    overlaps = [v["overlap@10"] for v in pq.values() if "overlap@10" in v]
    if deltas:
        colors = ["tab:green" if d > 0 else "tab:red" if d < 0 else "tab:gray" for d in deltas]
        right.bar(range(len(deltas)), deltas, color=colors, width=1.0)
        right.axhline(0, color="black", linewidth=0.6)
        right.set_xlabel("queries, sorted")
        better, worse = sum(d > 0 for d in deltas), sum(d < 0 for d in deltas)
        right.set_title(f"per query: candidate − active nDCG@10 ({better} better, {worse} worse, "
                        f"{len(deltas) - better - worse} tied)", fontsize=9)
    elif overlaps:
        right.hist(overlaps, bins=[i / 10 for i in range(11)], color="tab:blue")
        right.set_xlabel("overlap@10")
        right.set_title("per query: overlap@10 of the two spaces", fontsize=10)
    else:
        scores = [v["active"].get("ndcg@10", 0.0) for v in pq.values() if "ndcg@10" in v.get("active", {})]
        right.hist(scores, bins=[i / 10 for i in range(11)], color="tab:blue")
        right.set_xlabel("nDCG@10")
        right.set_title("per query nDCG@10", fontsize=10)
    right.grid(alpha=0.3)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    plt.close(fig)
    return path


def data_uri(png: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(png.read_bytes()).decode("ascii")


def inline_markdown(result: dict, png: Path) -> str:
    """The Markdown with the plot embedded as a data URI (the Dagster UI renders data: images)."""
    return markdown(result, data_uri(png))


def write_report(result: dict, directory: Path, stem: str) -> dict[str, Path]:
    """Write ``<stem>.md`` (linking ``<stem>.png``), ``<stem>.png`` and ``<stem>.json``; return their paths."""
    directory.mkdir(parents=True, exist_ok=True)
    png = plot(result, directory / f"{stem}.png")
    md = directory / f"{stem}.md"
    md.write_text(markdown(result, png.name), encoding="utf-8")
    js = directory / f"{stem}.json"
    payload = {key: v for key, v in result.items() if key not in ("files", "report_path", "id")}
    js.write_text(json.dumps(payload, indent=2, default=str, ensure_ascii=False), encoding="utf-8")
    return {"markdown": md, "png": png, "json": js}
