"""The web service behind serve.py: a FastAPI app over a bounded pool of loaded FaceAnalyzers.

Endpoints: ``POST /analyze`` (multipart field ``image``, or the raw image bytes as the body) answers the
JSON record test.py writes for one image; ``GET /health``; ``GET /`` an upload page whose form posts to
``POST /`` and is redirected to ``GET /results/<id>`` (annotated picture and table of faces, kept in a
small in-memory cache). Errors are JSON ``{"error": "<one line>"}``: 400 bad upload, 413 too many bytes
or pixels, 503 when the queue is full.
"""
import base64
import html
import secrets
import threading
from collections import OrderedDict

import anyio
import cv2
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from agegender import config
from agegender.errors import AgeGenderError, ImageTooLargeError
from agegender.image import decode_image

from .draw import draw_faces
from .runner import _rescaled, image_record


class UploadError(AgeGenderError):
    """A request that cannot be analysed; ``status`` is the HTTP status to answer."""

    def __init__(self, message, status=400):
        super().__init__(message)
        self.status = status


class AnalyzerPool:
    """Loaded analyzers, each used by one request at a time; at most ``max_waiting`` requests queue up."""

    def __init__(self, analyzers, max_waiting=config.SERVE_QUEUE):
        self.analyzers = list(analyzers)
        self._free = list(self.analyzers)
        self._free_lock = threading.Lock()
        self.limiter = anyio.CapacityLimiter(len(self.analyzers))
        self.max_pending = len(self.analyzers) + max_waiting
        self.pending = 0          # only touched on the event loop thread

    def _call(self, fn, *args):
        with self._free_lock:
            analyzer = self._free.pop()
        try:
            return fn(analyzer, *args)
        finally:
            with self._free_lock:
                self._free.append(analyzer)

    async def run(self, fn, *args):
        """``fn(analyzer, *args)`` in a worker thread with an analyzer of its own; UploadError 503 if full."""
        if self.pending >= self.max_pending:
            raise UploadError(f"busy: {self.pending} requests in progress, try again later", 503)
        self.pending += 1
        try:
            return await anyio.to_thread.run_sync(self._call, fn, *args, limiter=self.limiter)
        finally:
            self.pending -= 1


def analyze_bytes(analyzer, data, name, max_pixels, annotate=False):
    """Decode and analyse one uploaded image; returns ``(record, annotated JPEG bytes or None)``."""
    image, scale = decode_image(data, name, max_pixels=max_pixels)
    if analyzer.finder is None:
        faces = _rescaled(analyzer.analyze_aligned([image])[0], scale)
    else:
        faces = analyzer.analyze_many([image], scales=[scale])[0]
    record = image_record(name, None, image, scale, analyzer.detector_name, faces)
    picture = None
    if annotate:
        ok, encoded = cv2.imencode(".jpg", draw_faces(image, _rescaled(faces, 1.0 / scale)))
        picture = encoded.tobytes() if ok else None
    return record, picture


# An upload refused for its size is still read (and dropped) up to this many bytes before the 413 goes out: a
# client still sending when the server closes the connection gets a broken pipe instead of the answer.
DRAIN_BYTES = 256 * 1024 * 1024


async def read_body(request, max_bytes):
    """The request body; over ``max_bytes`` (declared or counted) it is drained and refused with 413."""
    declared = request.headers.get("content-length")
    declared = int(declared) if declared is not None and declared.isdigit() else None
    declared_too_long = declared is not None and declared > max_bytes
    too_long = declared_too_long
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if not too_long and size > max_bytes:
            too_long, chunks = True, []
        if not too_long:
            chunks.append(chunk)
        elif size > DRAIN_BYTES:
            break
    if too_long:
        amount = f"{declared} bytes" if declared_too_long else f"more than {max_bytes} bytes"
        raise UploadError(f"upload of {amount} refused (limit {max_bytes} bytes)", 413)
    return b"".join(chunks)


async def upload_from(request, max_bytes):
    """``(image bytes, name)`` from a multipart ``image`` field or a raw body."""
    body = await read_body(request, max_bytes)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        return body, "upload"

    async def stream():
        yield body

    try:
        form = await MultiPartParser(request.headers, stream(), max_files=1, max_fields=8,
                                     max_part_size=max_bytes).parse()
    except MultiPartException as exc:
        raise UploadError(f"malformed multipart body ({exc.message})") from None
    field = form.get("image")
    if not isinstance(field, UploadFile):
        raise UploadError("multipart body has no file field named 'image'")
    try:
        return await field.read(), field.filename or "upload"
    finally:
        await form.close()


class ResultCache:
    """The last ``size`` upload-page results (HTML of the result page), under unguessable ids."""

    def __init__(self, size):
        self.size = size
        self.pages = OrderedDict()

    def add(self, page):
        key = secrets.token_urlsafe(12)
        self.pages[key] = page
        while len(self.pages) > self.size:
            self.pages.popitem(last=False)
        return key


def create_app(analyzers, max_bytes=config.SERVE_MAX_BYTES, max_pixels=config.SERVE_MAX_PIXELS,
               max_waiting=config.SERVE_QUEUE, backend="mxnet"):
    """The FastAPI app answering with the given analyzers (one request each at a time)."""
    pool = AnalyzerPool(analyzers, max_waiting)
    results = ResultCache(config.SERVE_RESULT_PAGES)
    detector = pool.analyzers[0].detector_name
    app = FastAPI(title="age/gender estimation", docs_url=None, redoc_url=None)

    @app.exception_handler(UploadError)
    async def upload_error(request, exc):
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    async def analyze_request(request, annotate):
        data, name = await upload_from(request, max_bytes)
        try:
            return await pool.run(analyze_bytes, data, name, max_pixels, annotate)
        except UploadError:
            raise
        except ImageTooLargeError as exc:
            raise UploadError(str(exc), 413) from None
        except AgeGenderError as exc:
            raise UploadError(str(exc)) from None
        except cv2.error as exc:
            raise UploadError(f"{name}: OpenCV could not process it ({str(exc).strip().splitlines()[-1]})") from None

    @app.get("/health")
    async def health():
        return {"status": "ok", "backend": backend, "detector": detector, "workers": len(pool.analyzers),
                "in_progress": pool.pending}

    @app.post("/analyze")
    async def analyze(request: Request):
        record, _ = await analyze_request(request, annotate=False)
        return record

    @app.get("/", response_class=HTMLResponse)
    async def upload_page():
        return page(f"<p>Detector: {detector}, backend: {backend}. Pictures up to {max_bytes} bytes.</p>")

    @app.post("/")
    async def upload_form(request: Request):
        try:
            record, picture = await analyze_request(request, annotate=True)
        except UploadError as exc:
            return HTMLResponse(page(f'<p class="error">{html.escape(str(exc))}</p>'), status_code=exc.status)
        key = results.add(result_page(record, picture))
        return RedirectResponse(f"/results/{key}", status_code=303)

    @app.get("/results/{key}", response_class=HTMLResponse)
    async def result(key: str):
        found = results.pages.get(key)
        if found is None:
            return HTMLResponse(page('<p class="error">result no longer kept; upload the picture again</p>'),
                                status_code=404)
        return found

    return app


_STYLE = ("body{font-family:sans-serif;margin:1.5em}img{max-width:100%;display:block;margin:1em 0}"
          "table{border-collapse:collapse}td,th{border:1px solid #999;padding:2px 8px;text-align:right}"
          ".error{color:#b00}")


def page(body):
    """The upload page with ``body`` (HTML) under the form."""
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Age and gender</title>"
            f"<style>{_STYLE}</style></head><body><h1>Age and gender of every face</h1>"
            f"<form method='post' action='/' enctype='multipart/form-data'>"
            f"<input type='file' name='image' accept='image/*' required> <button type='submit'>Analyze</button>"
            f"</form>{body}</body></html>")


def _face_row(index, face):
    score = "" if face["score"] is None else f"{face['score']:.3f}"
    box = ", ".join(f"{v:.0f}" for v in face["bbox"])
    return (f"<tr><td>{index}</td><td>{box}</td><td>{score}</td><td>{face['age']}</td>"
            f"<td>{face['age_expected']:.1f}</td><td>{face['gender']}</td><td>{face['gender_prob_male']:.3f}</td></tr>")


def result_page(record, picture):
    """The result page: annotated picture and one table row per face."""
    rows = "".join(_face_row(i, face) for i, face in enumerate(record["faces"]))
    image = (f"<img id='annotated' alt='annotated picture' src='data:image/jpeg;base64,"
             f"{base64.b64encode(picture).decode()}'>" if picture else "")
    return page(f"<h2>{html.escape(record['image'])}: {len(record['faces'])} face(s), "
                f"{record['width']}x{record['height']}</h2>{image}"
                f"<table id='faces'><tr><th>#</th><th>box x1, y1, x2, y2</th><th>score</th><th>age</th>"
                f"<th>expected age</th><th>gender</th><th>P(male)</th></tr>{rows}</table>")
