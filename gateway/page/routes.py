"""The web page: a static HTML/JS/CSS editor served at ``/`` that talks to the gateway's own ``/v1`` API.

No build step: the files under ``web/`` are plain ES modules, served as they are. The page holds no
secrets and the gateway gives it nothing the API does not (the key is the user's, typed into the page).
"""

from __future__ import annotations

from importlib import resources

from fastapi import FastAPI
from fastapi.responses import HTMLResponse, Response
from fastapi.staticfiles import StaticFiles

WEB_DIR = resources.files("triton_inpaint.gateway.page") / "web"
# Images the page offers to try it with (``Open the sample``), from the package's own assets.
SAMPLES = {"sample.png": "sample.png", "sample_mask.png": "sample_mask.png"}


def page_headers(image_origins: tuple[str, ...] = ()) -> dict[str, str]:
    """The page loads only its own files and images (and, when the gateway redirects result images to
    presigned bucket URLs, images from the bucket), and speaks only to its own origin."""
    images = " ".join(("'self'", "data:", "blob:", *image_origins))
    return {
        "Content-Security-Policy": (
            f"default-src 'self'; img-src {images}; connect-src 'self'; style-src 'self'; "
            "script-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
        ),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",  # a new gateway version's page is picked up on the next load
    }


class _PageFiles(StaticFiles):
    """The page's scripts and styles, with the page's headers."""

    def __init__(self, headers: dict[str, str], **options: object) -> None:
        super().__init__(**options)  # type: ignore[arg-type]
        self.headers = headers

    async def get_response(self, path: str, scope: dict) -> Response:
        response = await super().get_response(path, scope)
        response.headers.update(self.headers)
        return response


def add_page_routes(app: FastAPI, image_origins: tuple[str, ...] = ()) -> None:
    index = (WEB_DIR / "index.html").read_text(encoding="utf-8")
    headers = page_headers(image_origins)

    @app.get("/", include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(index, headers=headers)

    @app.get("/ui/samples/{name}", include_in_schema=False)
    async def sample(name: str) -> Response:
        asset = SAMPLES.get(name)
        if asset is None:
            return Response(status_code=404)
        data = resources.files("triton_inpaint.assets").joinpath(asset).read_bytes()
        return Response(data, media_type="image/png", headers={"Cache-Control": "public, max-age=3600"})

    app.mount("/ui", _PageFiles(headers, directory=str(WEB_DIR)), name="ui")
