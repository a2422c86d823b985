"""The HTML page around the views: inline (the offline report) or linked (the live dashboard).

Both run the same script, ``static/app.js``, over run payloads from
:mod:`firepbt.dashboard.data`; the charts are drawn by the vendored plotly.js basic bundle
(``static/plotly-basic.min.js``, MIT, see ``static/plotly-LICENSE.txt``), so nothing is fetched
from the network when a page is viewed.
"""

from __future__ import annotations

import html
import json
import re
from functools import cache
from importlib import resources
from typing import Any

PLOTLY = "plotly-basic.min.js"
STATIC_FILES = (PLOTLY, "app.js", "app.css", "plotly-LICENSE.txt")


@cache
def static_text(name: str) -> str:
    """The text of a file shipped in ``firepbt/dashboard/static``."""
    if name not in STATIC_FILES and name != "page.html":
        raise KeyError(name)
    return (resources.files("firepbt.dashboard") / "static" / name).read_text(encoding="utf-8")


def _fill(title: str, subtitle: str, head: str, body: str) -> str:
    # One pass with a function, not str.format (the scripts are full of braces) and not
    # chained replaces (a task named "{body}" must stay text).
    parts = {"title": html.escape(title), "subtitle": html.escape(subtitle), "head": head,
             "body": body}
    return re.sub(r"\{(title|subtitle|head|body)\}", lambda m: parts[m.group(1)],
                  static_text("page.html"))


def _script(text: str) -> str:
    # An inline script ends at the first "</script"; none of ours may contain one.
    return "<script>" + text.replace("</script", "<\\/script") + "</script>"


def embed_json(data: Any) -> str:
    """JSON safe inside ``<script type="application/json">``: every ``<`` is escaped, so a
    store value such as ``</script>`` cannot end the block."""
    text = json.dumps(data, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def offline_page(title: str, runs: list[dict[str, Any]], subtitle: str = "",
                 first_tab: int = 0) -> str:
    """One self-contained HTML page: style, plotly, the views and the data, all inline.

    ``first_tab`` is the tab shown first: a run's index, or ``len(runs)`` for the comparison
    (several runs only)."""
    head = f"<style>{static_text('app.css')}</style>"
    data = embed_json({"runs": runs, "tab": first_tab})
    body = (
        f"<script id='fp-data' type='application/json'>{data}</script>\n"
        + _script(static_text(PLOTLY)) + "\n" + _script(static_text("app.js")) + "\n"
        + _script("FP.offline(document.getElementById('root'), "
                  "JSON.parse(document.getElementById('fp-data').textContent));")
    )
    return _fill(title, subtitle, head, body)


def live_page(title: str, poll_ms: int) -> str:
    """The dashboard's page: the same views, fed by the server's JSON API and refreshed by
    polling (no reload)."""
    head = "<link rel='stylesheet' href='static/app.css'>"
    body = (
        f"<script src='static/{PLOTLY}'></script>\n<script src='static/app.js'></script>\n"
        + _script(f"FP.live(document.getElementById('root'), {{pollMs: {int(poll_ms)}}});")
    )
    return _fill(title, "live", head, body)
