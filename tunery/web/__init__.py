"""The web console at /ui: server-rendered pages over the same library functions as the CLI and API.

Assets (htmx, uPlot) are vendored under `static/vendor`; nothing is fetched from elsewhere.
"""
