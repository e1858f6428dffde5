"""``/docs``: Swagger UI over the Admin API's ``/openapi.json``, on the dashboard's origin.

Swagger UI comes from jsDelivr, at one pinned version whose files must match their SHA-384
(Subresource Integrity): a changed or compromised package on the CDN is refused by the browser
instead of running with the dashboard's cookies. The page's own script is served from here, and
a Content-Security-Policy allows nothing else; the page cannot be framed."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.responses import Response

SWAGGER = "https://cdn.jsdelivr.net/npm/swagger-ui-dist@5.36.0"
# `openssl dgst -sha384 -binary <file> | base64` of the files of swagger-ui-dist 5.36.0 (npm pack)
BUNDLE_SRI = "sha384-fUpRgC19yPykTqzdrUbdAg8NTiu16NEKf9U12J+IJWCg8/1mEI8f2+PEIz60Wyd+"
CSS_SRI = "sha384-z/AtSaOHGn5MJ5auAHXUypohywlIWLBZo1jeGmhdpVIbCnFhxAH92cwdV41oyINc"

PAGE = f"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>keyplane Admin API</title>
<link rel="stylesheet" href="{SWAGGER}/swagger-ui.css" integrity="{CSS_SRI}" crossorigin="anonymous">
</head>
<body>
<div id="swagger-ui"></div>
<script src="{SWAGGER}/swagger-ui-bundle.js" integrity="{BUNDLE_SRI}" crossorigin="anonymous"></script>
<script src="/docs/init.js"></script>
</body>
</html>
"""
INIT = 'SwaggerUIBundle({url: "/openapi.json", dom_id: "#swagger-ui", deepLinking: true});\n'
HEADERS = {
    "content-security-policy": (
        "default-src 'none'; script-src 'self' https://cdn.jsdelivr.net; "
        "style-src https://cdn.jsdelivr.net 'unsafe-inline'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "x-frame-options": "DENY",
    "x-content-type-options": "nosniff",
    "referrer-policy": "same-origin",
    "cache-control": "no-cache",
}


def install(app: FastAPI) -> None:
    """Serves ``/docs`` and its script (the app is built with ``docs_url=None``)."""

    @app.get("/docs", include_in_schema=False)
    async def docs() -> Response:
        return Response(PAGE, media_type="text/html", headers=HEADERS)

    @app.get("/docs/init.js", include_in_schema=False)
    async def init() -> Response:
        return Response(INIT, media_type="text/javascript", headers=HEADERS)
