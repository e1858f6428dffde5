"""``/docs``: Swagger UI over the Admin API's ``/openapi.json``, on the dashboard's origin.

Every file of the page is served from here, so the docs work on a machine with no Internet
access (as the rest of keyplane does): Swagger UI's script and stylesheet are the ones the
``fastapi-offline`` package ships (Swagger UI 5, which reads FastAPI's OpenAPI 3.1), at the version
the lock file pins. A Content-Security-Policy allows no other origin; the page cannot be framed."""

from __future__ import annotations

from importlib.metadata import version
from importlib.resources import files
from pathlib import Path

from fastapi import FastAPI
from starlette.responses import FileResponse, Response

BUNDLE = "/docs/swagger-ui-bundle.js"
CSS = "/docs/swagger-ui.css"
PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>keyplane Admin API</title>
<link rel="stylesheet" href="{css}">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{bundle}"></script>
<script src="/docs/init.js"></script>
</body>
</html>
"""
INIT = 'SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true});\n'
HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-cache",
}
ASSET_HEADERS = {**HEADERS, "cache-control": "public, max-age=86400"}


def install(app: FastAPI) -> None:
    """Serves ``/docs``, its script and Swagger UI's files (the app has ``docs_url=None``)."""
    assets = Path(str(files("fastapi_offline") / "static"))  # (a wheel installs plain files)
    bundle, css = assets / "swagger-ui-bundle.js", assets / "swagger-ui.css"
    for found in (bundle, css):  # (a broken install fails at start, not as a blank page)
        if not found.is_file():
            raise RuntimeError(f"Swagger UI's {found.name} is missing: reinstall fastapi-offline")
    # The package's version in the files' URLs: browsers keep them a day, yet see an upgrade.
    release = f"?v={version('fastapi-offline')}"
    page = PAGE.format(css=CSS + release, bundle=BUNDLE + release)

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Response:
        return Response(page, media_type="text/html", headers=HEADERS)

    @app.get("/docs/init.js", include_in_schema=False)
    async def init() -> Response:
        return Response(INIT, media_type="text/javascript", headers=HEADERS)

    @app.get(BUNDLE, include_in_schema=False)
    async def swagger_bundle() -> Response:
        return FileResponse(bundle, media_type="text/javascript", headers=ASSET_HEADERS)

    @app.get(CSS, include_in_schema=False)
    async def swagger_css() -> Response:
        return FileResponse(css, media_type="text/css", headers=ASSET_HEADERS)
