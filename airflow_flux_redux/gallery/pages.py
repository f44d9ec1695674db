"""The gallery's HTML: the task page and the run's contact sheet. Plain HTML and CSS, no script.

Every value from the database is escaped. Images come from the app's own routes (by task and index);
a result URL is shown only when no file was saved, and only if it is http(s). A full-size image opens in
a CSS overlay: the UI's iframe allows no pop-ups, so a new tab would be blocked.
"""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

from airflow_flux_redux.gallery.records import (
    OPERATORS,
    Cost,
    Gallery,
    ImageView,
    Phase,
    TaskRecord,
    images,
    task_cost,
    timeline,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

_STYLE = """
:root { color-scheme: light dark; --fg:#1f2937; --muted:#6b7280; --line:#e5e7eb; --card:#fff; --bg:#f8fafc;
  --queue:#a8a29e; --run:#06b6d4; --done:#16a34a; --fail:#dc2626; }
@media (prefers-color-scheme: dark) { :root { --fg:#e5e7eb; --muted:#9ca3af; --line:#374151; --card:#111827;
  --bg:#0b1120; } }
* { box-sizing: border-box; }
body { margin: 0; padding: 16px 20px; font: 14px/1.45 ui-sans-serif, system-ui, sans-serif; color: var(--fg);
  background: var(--bg); }
h1 { font-size: 18px; margin: 0 0 12px; } h2 { font-size: 15px; margin: 20px 0 8px; }
a { color: inherit; }
.muted { color: var(--muted); }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; color: #fff;
  background: var(--muted); }
.badge.success { background: var(--done); } .badge.failed, .badge.upstream_failed { background: var(--fail); }
.badge.running, .badge.deferred, .badge.queued { background: var(--run); }
.badge.up_for_retry { background: #ca8a04; }
dl.facts { display: grid; grid-template-columns: max-content 1fr; gap: 4px 16px; margin: 0; }
dl.facts dt { color: var(--muted); } dl.facts dd { margin: 0; overflow-wrap: anywhere; }
code { font: 12px ui-monospace, monospace; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(170px, 1fr)); gap: 12px; }
.card { background: var(--card); border: 1px solid var(--line); border-radius: 8px; padding: 8px; }
.card img { display: block; width: 100%; height: 160px; object-fit: contain; background: var(--bg);
  border-radius: 4px; }
.card .caption { margin-top: 6px; font-size: 12px; }
.card.failed { border-color: var(--fail); }
.card .error { color: var(--fail); font-size: 12px; overflow-wrap: anywhere; }
.placeholder { height: 160px; display: flex; align-items: center; justify-content: center; color: var(--muted);
  background: var(--bg); border-radius: 4px; text-align: center; font-size: 12px; padding: 8px; }
.overlay { display: none; position: fixed; inset: 0; background: rgba(0,0,0,.85); z-index: 10;
  align-items: center; justify-content: center; }
.overlay:target { display: flex; }
.overlay img { max-width: 96vw; max-height: 92vh; }
.overlay .close { position: absolute; inset: 0; }
.bar { display: flex; height: 14px; border-radius: 7px; overflow: hidden; background: var(--line);
  max-width: 640px; }
.bar span { display: block; height: 100%; }
.bar .queue { background: var(--queue); } .bar .run { background: var(--run); }
table.timeline { border-collapse: collapse; margin-top: 8px; }
table.timeline td { padding: 2px 14px 2px 0; vertical-align: top; }
.summary { display: flex; gap: 24px; flex-wrap: wrap; margin-bottom: 12px; }
.summary div b { display: block; font-size: 18px; }
"""


def _page(title: str, body: str) -> str:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name="referrer" content="no-referrer">'
        f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>{body}</body></html>"
    )


def _badge(state: str | None) -> str:
    name = state or "none"
    return f'<span class="badge {escape(name)}" data-state="{escape(name)}">{escape(name)}</span>'


def _seconds(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.2f} s" if value < 60 else f"{int(value // 60)} min {value % 60:.0f} s"


def _number(value: float | None, digits: int = 3) -> str:
    return "not sent" if value is None else f"{value:,.{digits}f}".rstrip("0").rstrip(".")


class Urls:
    """The app's own URLs for one task's images, under the prefix the API server mounted it at."""

    def __init__(self, root: str, record: TaskRecord) -> None:
        parts = [quote(part, safe="") for part in (record.dag_id, record.run_id, record.task_id)]
        self.task = "{}/dags/{}/runs/{}/tasks/{}".format(root, *parts)
        self.query = "?" + urlencode({"map_index": record.map_index})

    def image(self, index: int, size: str) -> str:
        return f"{self.task}/images/{index}{self.query}&size={size}"

    def input(self, size: str) -> str:
        return f"{self.task}/input{self.query}&size={size}"

    @property
    def page(self) -> str:
        return self.task + self.query


def _http(url: str | None) -> str | None:
    return url if url and url.lower().startswith(("http://", "https://")) else None


def _picture(urls: Urls, image: ImageView, anchor: str) -> str:
    """A thumbnail that opens the full image in an overlay; a result URL only when nothing was saved."""
    if image.path:
        thumb, full = urls.image(image.index, "thumb"), urls.image(image.index, "full")
    elif _http(image.url):
        thumb = full = str(image.url)
    else:
        return '<div class="placeholder">not saved, and no URL</div>'
    size = f"{image.width}x{image.height}" if image.width and image.height else "image"
    alt = f"output {image.index} ({size})"
    return (
        f'<a href="#{escape(anchor)}"><img src="{escape(thumb)}" alt="{escape(alt)}" loading="lazy" '
        f'data-role="thumbnail"></a>'
        f'<div class="overlay" id="{escape(anchor)}"><a class="close" href="#" aria-label="close"></a>'
        f'<img src="{escape(full)}" alt="{escape(alt)} full size" loading="lazy"></div>'
    )


def _input_picture(urls: Urls, reference: str | None) -> str:
    if not reference:
        return '<span class="muted">not recorded (a result from an older provider version)</span>'
    text = f"<code>{escape(reference)}</code>"
    if reference[:5].lower() == "data:":
        return text
    src = _http(reference) or urls.input("thumb")
    full = _http(reference) or urls.input("full")
    return (
        f'<a href="#input-full"><img src="{escape(src)}" alt="input image" data-role="input" '
        f'style="max-width:200px;max-height:200px;display:block"></a>'
        f'<div class="overlay" id="input-full"><a class="close" href="#" aria-label="close"></a>'
        f'<img src="{escape(full)}" alt="input image full size" loading="lazy"></div>{text}'
    )


def _timeline(phases: list[Phase]) -> str:
    if not phases:
        return '<p class="muted">Not submitted yet.</p>'
    spans = [p for p in phases if p.seconds is not None]
    total = sum(p.seconds or 0 for p in spans) or 1.0
    classes = {"in queue": "queue", "in progress": "run"}
    bar = "".join(
        f'<span class="{classes.get(p.name, "queue")}" style="width:{100 * (p.seconds or 0) / total:.1f}%" '
        f'title="{escape(p.name)} {_seconds(p.seconds)}"></span>'
        for p in spans
    )
    rows = "".join(
        f"<tr><td><b>{escape(p.name)}</b></td><td>{escape(p.at.strftime('%Y-%m-%d %H:%M:%S'))} UTC</td>"
        f"<td>{_seconds(p.seconds)}</td><td class=muted>{escape(p.note)}</td></tr>"
        for p in phases
    )
    return f'<div class="bar">{bar}</div><table class="timeline" data-role="timeline">{rows}</table>'


def _facts(items: Iterable[tuple[str, str]]) -> str:
    return '<dl class="facts">' + "".join(f"<dt>{escape(k)}</dt><dd>{v}</dd>" for k, v in items) + "</dl>"


def _metrics(result: dict[str, Any]) -> str:
    shown = [f"{escape(str(k))}: {escape(str(v))}" for k, v in (result.get("metrics") or {}).items()]
    shown += [f"timings.{escape(str(k))}: {escape(str(v))}" for k, v in (result.get("timings") or {}).items()]
    return "<br>".join(shown) or '<span class="muted">none sent</span>'


def _cost(cost: Cost) -> str:
    text = f"{_number(cost.megapixels)} megapixels; fal billable units: {_number(cost.billable_units)}"
    if cost.unknown:
        text += f" ({cost.unknown} task(s) recorded no cost)"
    return escape(text)


def task_page(root: str, record: TaskRecord) -> str:
    if record.request_id is None and record.result is None and record.operator not in (None, *OPERATORS):
        note = (
            f"{escape(record.label)} is a {escape(record.operator or '')}: this tab shows FluxReduxOperator "
            "and @task.flux_redux tasks."
        )
        return _page("FLUX Redux", f'<p class="muted" data-role="not-ours">{note}</p>')
    urls = Urls(root, record)
    result = record.result
    header = f"<h1>FLUX Redux · {escape(record.label)} {_badge(record.state)}</h1>"
    facts = [("request id", f"<code>{escape(record.request_id or 'not submitted')}</code>")]
    if record.error:
        facts.append(("error", f'<span class="error" data-role="error">{escape(record.error)}</span>'))
    outputs = ""
    if result is not None:
        views = images(record)
        nsfw = [v.nsfw for v in views]
        saved = [f"<code>{escape(v.local_path or v.path or '')}</code>" for v in views if v.path]
        facts += [
            ("input", _input_picture(urls, result.get("input"))),
            ("seed", escape(str(result.get("seed")))),
            ("NSFW flags", escape(", ".join("yes" if f else "no" if f is not None else "?" for f in nsfw) or "none")),
            ("saved to", "<br>".join(saved) or '<span class="muted">not saved (no output_path)</span>'),
            ("cost", _cost(task_cost(record))),
            ("fal metrics", _metrics(result)),
        ]
        cards = "".join(
            f'<div class="card">{_picture(urls, v, f"image-{v.index}")}<div class="caption">#{v.index} · '
            f"{v.width}x{v.height} · {escape(v.content_type or '')}{' · NSFW' if v.nsfw else ''}</div></div>"
            for v in views
        )
        outputs = f'<h2>Outputs</h2><div class="grid" data-role="outputs">{cards}</div>'
    elif record.state in ("running", "deferred", "queued", "scheduled", None):
        facts.append(("result", '<span class="muted">not yet: the task is still waiting for fal</span>'))
    body = header + _facts(facts) + "<h2>Timeline</h2>" + _timeline(timeline(record)) + outputs
    return _page(f"FLUX Redux {record.label}", body)


def _run_card(root: str, position: int, record: TaskRecord) -> str:
    urls = Urls(root, record)
    views = images(record)
    if views:
        pictures = "".join(_picture(urls, v, f"task-{position}-{v.index}") for v in views)
    elif record.error:
        pictures = f'<div class="placeholder error" data-role="error">{escape(record.error)}</div>'
    else:
        pictures = f'<div class="placeholder">{escape(record.state or "not started")}</div>'
    state_class = "failed" if record.state in ("failed", "upstream_failed") else ""
    return (
        f'<div class="card {state_class}" data-task="{escape(record.label)}">{pictures}<div class="caption">'
        f'<a href="{escape(urls.page)}">{escape(record.label)}</a> {_badge(record.state)}</div></div>'
    )


def run_page(root: str, dag_id: str, run_id: str, run: Gallery) -> str:
    cost = run.cost
    states = ", ".join(f"{count} {state}" for state, count in sorted(run.states.items()))
    summary = (
        '<div class="summary" data-role="summary">'
        f"<div><b>{len(run.records)}</b>tasks ({escape(states or 'none')})</div>"
        f"<div><b>{cost.images}</b>images</div>"
        f"<div><b>{_number(cost.megapixels)}</b>megapixels</div>"
        f"<div><b>{_number(cost.billable_units)}</b>fal billable units</div></div>"
    )
    cards = "".join(_run_card(root, position, record) for position, record in enumerate(run.records))
    grid = (
        f'<div class="grid" data-role="contact-sheet">{cards}</div>'
        if cards
        else ('<p class="muted">No FluxReduxOperator task in this run.</p>')
    )
    body = f"<h1>FLUX Redux · {escape(dag_id)} · <code>{escape(run_id)}</code></h1>{summary}{grid}"
    return _page(f"FLUX Redux {run_id}", body)
