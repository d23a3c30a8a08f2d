"""The live dashboard: one page served by the gateway, drawn by its own JS and SVG.

``GET /dashboard`` is a static shell (``index.html``, ``dashboard.js``, ``charts.js``,
``dashboard.css`` in this folder, shipped as package data; nothing third party, nothing from a
CDN). The page polls ``GET /dashboard/data`` every second (``service.Dashboard``: per model,
the last five minutes per second from Redis, plus the gateway's own gauge history) and, when
the server has it, ``GET /v2/models/{name}/drift`` for the drift panel.

API keys. A browser cannot put an ``Authorization`` header on a page load, so the shell and its
scripts are served without a key: they are the same bytes for every server, hold no data and
name no model. Every call that returns data (``/dashboard/data``, the drift endpoint, the
model list) needs ``Authorization: Bearer KEY`` like any other endpoint. The page gets the key
from the ``#key=KEY`` fragment of its address (a fragment never leaves the browser: it is not
sent to the server, kept in its logs or passed on as a Referer), which it removes from the
address bar at once, or from a form it shows after a 401. It keeps the key in
``sessionStorage`` (this tab only, gone when the tab closes) and sends it as a Bearer header
on each fetch. A ``?key=`` query parameter is deliberately not supported: it would travel in
the request line into proxy logs and browser history. The shell is served with a strict
Content-Security-Policy (scripts and styles from this server only, no inline script, fetches
to this origin only, no framing), and the page inserts every string from the API as text,
never as markup.
"""

from modelgate.gateway.dashboard.service import Dashboard

__all__ = ["Dashboard"]
