"""Live dashboard (``firepbt dashboard``) and the data behind the interactive report.

``data`` builds the views from a store (no user code imported), ``page`` wraps them in HTML
with the vendored plotly.js, ``server`` serves them live (Starlette + uvicorn, the
``dashboard`` extra). ``firepbt.report`` writes the same views into one offline file.
"""
