"""``report.html``: one self-contained page per job output, written by the reducer.

The page has, top to bottom:

1. the row counts and where the outputs are;
2. per task and method: rows, ok, failed, the mean of every metric (↑/↓ says which way is
   better) and the mean seconds per stage;
3. two plots (PNG under ``report/``): the first full-reference metric (PSNR when present)
   per method per task, and the seconds per stage as stacked bars per task/method;
4. an image grid for a sample of rows: observed y / restored / ground truth / the nearest
   neighbours the adapter was trained on;
5. the failures: counted by error, then the first ``reducer.MAX_FAILURES`` rows (by id)
   with their one-line error; the full list is ``summary.parquet``.

Every link and ``<img src>`` is relative to the output URI (``restored/…``, ``observed/…``,
``gt/…``, ``report/…``), so the page works on a local disk, after ``aws s3 sync`` or served
from a bucket. Neighbours live in the index's corpus, anywhere (another bucket, a local
cache on a worker), so small copies are fetched and saved under ``report/neighbours/``.
Styling is inline (no external CSS/JS); all text is escaped with ``html.escape``.
"""

from __future__ import annotations

import hashlib
import html
import io
import logging
import re

import pandas as pd

from restore_core import storage
from restore_core.images import decode_image_bytes, encode_png, resize

log = logging.getLogger(__name__)

THUMB = 96  # neighbour thumbnails: longest side in pixels
NB_SHOWN = 8  # nearest neighbours shown per grid row (K may be 20)
_SAFE = re.compile(r"[^A-Za-z0-9._-]")

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:24px;color:#1b1f24;background:#fafafa}
h1{font-size:22px;margin:0 0 4px} h2{font-size:17px;margin:28px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
.meta{color:#555;font-size:13px} .meta code{background:#eee;padding:1px 4px;border-radius:3px}
table{border-collapse:collapse;font-size:13px;background:#fff}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:right;vertical-align:top}
th{background:#f0f2f5} td.l,th.l{text-align:left}
.ok{color:#1a7f37;font-weight:600} .bad{color:#cf222e;font-weight:600}
.grid td{text-align:center;font-size:12px} .grid img{width:128px;height:128px;object-fit:contain;
image-rendering:pixelated;background:#ddd;display:block;margin:auto}
.grid img.nb{width:64px;height:64px;display:inline-block;margin:1px}
.plots img{max-width:640px;margin-right:16px;border:1px solid #ddd;background:#fff}
.err{font-family:ui-monospace,monospace;color:#cf222e;text-align:left;white-space:pre-wrap}
"""


def _e(value) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _fmt(value) -> str:
    if value is None or (isinstance(value, float) and value != value):
        return "–"
    return f"{value:.4g}" if abs(value) < 1000 else f"{value:.0f}"


def _fmt_seconds(value) -> str:
    return "–" if value is None else f"{value:.2f}"


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def _plots(output_uri: str, summary: dict) -> list[tuple[str, str]]:
    """Write the plots under ``report/``; returns (relative path, caption) pairs."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, safe in workers

    groups = summary["groups"]
    tasks = sorted({g["task"] for g in groups})
    methods = sorted({g["method"] for g in groups})
    out = []
    fr = [m for m in ("psnr", "ssim") if m in summary["metrics"]] or summary["metrics"]
    metric = next((m for m in fr if any(g["metrics"].get(m) is not None for g in groups)), None)
    if metric and tasks:
        fig = Figure(figsize=(1.6 + 1.4 * len(tasks), 3.2))
        ax = fig.add_subplot()
        width = 0.8 / max(1, len(methods))
        for j, method in enumerate(methods):
            vals = [next((g["metrics"].get(metric) for g in groups if g["task"] == t and g["method"] == method), None)
                    for t in tasks]
            xs = [i + (j - (len(methods) - 1) / 2) * width for i in range(len(tasks))]
            ax.bar(xs, [v if v is not None else 0.0 for v in vals], width, label=method)
        ax.set_xticks(range(len(tasks)), tasks)
        arrow = "lower is better" if metric in summary["lower_better"] else "higher is better"
        ax.set_ylabel(f"mean {metric} ({arrow})")
        ax.set_title(f"{metric} per method and task")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        rel = "report/metric_by_method.png"
        storage.atomic_write_bytes(storage.join(output_uri, rel), _png(fig))
        out.append((rel, f"Mean {metric} per method and task"))
    stages = [s for s in summary["seconds"] if s != "seconds_total"]
    if stages and groups:
        fig = Figure(figsize=(1.6 + 0.9 * len(groups), 3.4))
        ax = fig.add_subplot()
        labels = [f"{g['task']}\n{g['method']}" for g in groups]
        bottom = [0.0] * len(groups)
        for s in stages:
            vals = [g["seconds"].get(s) or 0.0 for g in groups]
            ax.bar(range(len(groups)), vals, 0.6, bottom=bottom, label=s.removeprefix("seconds_"))
            bottom = [b + v for b, v in zip(bottom, vals)]
        ax.set_xticks(range(len(groups)), labels, fontsize=8)
        ax.set_ylabel("mean seconds per row")
        ax.set_title("where the time goes")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
        rel = "report/seconds_by_stage.png"
        storage.atomic_write_bytes(storage.join(output_uri, rel), _png(fig))
        out.append((rel, "Mean seconds per stage per row"))
    return out


def _neighbour_thumb(output_uri: str, image_id: str, uri: str, cache: dict) -> str | None:
    """Relative path of a small copy of a neighbour image under ``report/neighbours/``,
    or None when it cannot be fetched (the grid then shows its id without a picture)."""
    if uri in cache:
        return cache[uri]
    name = f"{_SAFE.sub('_', image_id)[:80]}-{hashlib.sha1(uri.encode()).hexdigest()[:8]}.png"
    rel = f"report/neighbours/{name}"
    try:
        x = decode_image_bytes(storage.read_bytes(uri), name=uri)
        h, w = x.shape[-2:]
        scale = min(1.0, THUMB / max(h, w))
        x = resize(x, (max(1, round(h * scale)), max(1, round(w * scale))))
        storage.atomic_write_bytes(storage.join(output_uri, rel), encode_png(x))
    except Exception as exc:  # a broken neighbour must not break the report
        log.warning("report: neighbour %s not shown: %s", uri, exc)
        rel = None
    cache[uri] = rel
    return rel


def sample_rows(df: pd.DataFrame, per_group: int) -> pd.DataFrame:
    """The rows of the image grid: the first ``per_group`` finished rows (by image id) of
    every (task, method), ordered by task then image then method so methods on the same
    input sit next to each other."""
    ok = df[df["status"] == "ok"].sort_values(["task", "image_id", "method"])
    picked = ok.groupby(["task", "method"], sort=False).head(per_group)
    return picked.sort_values(["task", "image_id", "method"])


def _summary_table(summary: dict) -> str:
    metrics, seconds = summary["metrics"], summary["seconds"]
    lower = set(summary["lower_better"])
    head = ["task", "method", "rows", "ok", "failed"]
    cells = [f"<th class=l>{_e(h)}</th>" if i < 2 else f"<th>{_e(h)}</th>" for i, h in enumerate(head)]
    cells += [f"<th>{_e(m)} {'↓' if m in lower else '↑'}</th>" for m in metrics]
    cells += [f"<th>s {_e(s.removeprefix('seconds_'))}</th>" for s in seconds]
    rows = ["<tr>" + "".join(cells) + "</tr>"]
    for g in summary["groups"]:
        tds = [f"<td class=l>{_e(g['task'])}</td>", f"<td class=l>{_e(g['method'])}</td>",
               f"<td>{g['rows']}</td>", f"<td class=ok>{g['ok']}</td>",
               f"<td class={'bad' if g['failed'] else 'ok'}>{g['failed']}</td>"]
        tds += [f"<td>{_fmt(g['metrics'].get(m))}</td>" for m in metrics]
        tds += [f"<td>{_fmt_seconds(g['seconds'].get(s))}</td>" for s in seconds]
        rows.append("<tr>" + "".join(tds) + "</tr>")
    return "<table>" + "\n".join(rows) + "</table>"


def _img(rel: str | None, alt: str, cls: str = "") -> str:
    if not rel:
        return "<span class=meta>–</span>"
    c = f" class={cls}" if cls else ""
    return f'<a href="{_e(rel)}"><img{c} src="{_e(rel)}" alt="{_e(alt)}" title="{_e(alt)}" loading="lazy"></a>'


def _grid(output_uri: str, rows: pd.DataFrame, metric: str | None) -> str:
    cache: dict = {}
    out = ["<table class=grid><tr><th class=l>row</th><th>observed y</th><th>restored</th>"
           "<th>ground truth</th><th>nearest neighbours (adaptation set)</th></tr>"]
    for r in rows.itertuples():
        ids = [] if r.neighbour_ids is None else list(r.neighbour_ids)
        uris = [] if r.neighbour_uris is None else list(r.neighbour_uris)
        nbs = " ".join(_img(_neighbour_thumb(output_uri, i, u, cache), f"neighbour {i}", "nb")
                       for i, u in list(zip(ids, uris))[:NB_SHOWN])
        if len(ids) > NB_SHOWN:
            nbs += f" <span class=meta>+{len(ids) - NB_SHOWN} more</span>"
        score = getattr(r, metric, None) if metric else None
        label = (f"<b>{_e(r.image_id)}</b><br>{_e(r.task)} · {_e(r.method)}"
                 + (f"<br>{_e(metric)} {_fmt(score)}" if metric and score is not None else ""))
        out.append(f"<tr><td class=l>{label}</td><td>{_img(r.observed_path, 'observed ' + r.image_id)}</td>"
                   f"<td>{_img(r.output_path, 'restored ' + r.image_id)}</td>"
                   f"<td>{_img(r.gt_path, 'ground truth ' + r.image_id)}</td>"
                   f"<td>{nbs or '<span class=meta>none (method uses no neighbours)</span>'}</td></tr>")
    return "\n".join(out) + "</table>"


def _failures(summary: dict) -> str:
    if not summary["failures"]:
        return "<p class=ok>No failed rows.</p>"
    counts = ["<tr><th>rows</th><th class=l>error</th></tr>"]
    counts += [f"<tr><td>{c['rows']}</td><td class=err>{_e(c['error'])}</td></tr>"
               for c in summary.get("failures_by_error", [])]
    shown = (f"<p class=meta>The first {len(summary['failures'])} of {summary['failed']} failed rows by id; "
             "all of them are in <a href=\"summary.parquet\">summary.parquet</a> (status = failed).</p>")
    rows = ["<tr><th class=l>image_id</th><th class=l>task</th><th class=l>method</th>"
            "<th class=l>input</th><th class=l>error</th></tr>"]
    rows += [f"<tr><td class=l>{_e(f['image_id'])}</td><td class=l>{_e(f['task'])}</td>"
             f"<td class=l>{_e(f['method'])}</td><td class=l>{_e(f['input_uri'])}</td>"
             f"<td class=err>{_e(f['error'])}</td></tr>" for f in summary["failures"]]
    return ("<h3>By error</h3><table>" + "\n".join(counts) + "</table>" + shown
            + "<table>" + "\n".join(rows) + "</table>")


def _elsewhere(summary: dict) -> str:
    """What the folder holds besides the counted rows (records of other manifests or of
    an earlier version of a row, rows without a record yet)."""
    parts = [f"{summary.get('missing', 0)} without a record"] if summary.get("missing") else []
    if summary.get("records_outside_manifest"):
        parts.append(f"{summary['records_outside_manifest']} records of rows not in this manifest")
    if summary.get("records_of_other_row_versions"):
        parts.append(f"{summary['records_of_other_row_versions']} records of an earlier version of a row")
    return (" · " + _e("; ".join(parts))) if parts else ""


def write_report(output_uri: str, df: pd.DataFrame, summary: dict, per_group: int = 4) -> str:
    """Write ``report.html`` and its assets under ``output_uri``; returns the page's URI."""
    plots = _plots(output_uri, summary)
    metric = next((m for m in ("psnr", "ssim") if m in summary["metrics"]), None)
    grid_rows = sample_rows(df, per_group)
    status = (f"<span class=ok>{summary['ok']} ok</span> · "
              f"<span class={'bad' if summary['failed'] else 'ok'}>{summary['failed']} failed</span>")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>ADIR report — {_e(output_uri)}</title>
<style>{_CSS}</style></head><body>
<h1>ADIR restoration report</h1>
<p class=meta>{summary['rows']} rows: {status}{_elsewhere(summary)} · outputs in <code>{_e(output_uri)}</code> ·
generated {_e(summary['generated_at'])} · worker time {_fmt_seconds(summary['worker_seconds'])} s ·
data: <a href="summary.json">summary.json</a>, <a href="summary.parquet">summary.parquet</a></p>
<h2>Mean metrics and seconds per task and method</h2>
<p class=meta>Means over finished rows. ↑ higher is better, ↓ lower is better; consistency is
‖A x̂ − y‖/√m on the 0–255 scale. Seconds are per row on one worker.</p>
{_summary_table(summary)}
<h2>Plots</h2>
<div class=plots>{''.join(f'<figure style="display:inline-block;margin:0"><img src="{_e(p)}" alt="{_e(c)}"><figcaption class=meta>{_e(c)}</figcaption></figure>' for p, c in plots) or '<p class=meta>No finished rows to plot.</p>'}</div>
<h2>Samples ({len(grid_rows)} rows)</h2>
<p class=meta>Observed y is shown as the method saw it, scaled to the cell (pixelated), so a
×4 super-resolution input looks blocky. Click any image for the full-size file.</p>
{_grid(output_uri, grid_rows, metric)}
<h2>Failures ({summary['failed']})</h2>
{_failures(summary)}
</body></html>
"""
    uri = storage.join(output_uri, "report.html")
    storage.atomic_write_bytes(uri, page.encode("utf-8"))
    return uri
