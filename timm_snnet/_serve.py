"""Serving: an SN-Net behind HTTP on Ray Serve, with dynamic batching and a stitch controller that follows the load.

- `StitchController`: pure Python (a clock is injected). Per batch it picks the most accurate stitch whose predicted
  latency at that batch size, plus the oldest request's queue wait, fits a p95 latency SLO, and leaves the queue
  behind it (queued requests plus those the recent arrival rate brings during the batch) time to be served next by
  the fastest stitch; it switches to a faster stitch at once and back to a slower one only with headroom
  (`hysteresis`) and after `hold_s` seconds. Per-request deadlines (`deadline_ms`) narrow the choice for one batch.
- `SNNetService`: the deployment body (plain class; Ray Serve wraps it). `POST /predict`, `GET /stitches`,
  `GET /metrics`, `GET /health`.
- `build_app(model, ...)`: loads and profiles the model (errors raise before anything binds) and returns the bound
  app for `serve.run`; `app_builder(args)` is the same for Ray Serve config files
  (`import_path: timm_snnet._serve:app_builder`); `serve_forever` runs it until SIGINT/SIGTERM (the CLI).
"""
from __future__ import annotations

import asyncio
import base64
import binascii
import bisect
import collections
import hmac
import io
import ipaddress
import json
import math
import os
import reprlib
import signal
import socket
import statistics
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence

import timm
import torch
from PIL import Image

from ._errors import SNNetError
from ._latency import profile
from ._load import load_snnet
from ._selection import pareto_front, parse_stitches, select_stitch

__all__ = ['StitchController', 'SNNetService', 'RequestError', 'build_app', 'app_builder', 'serve_forever',
           'start_serve', 'stop_serve', 'serving_table', 'load_latency_table', 'decode_image', 'parse_budget',
           'proxy_guard']

BUDGET_FIELDS = ('stitch_id', 'max_gflops', 'max_latency_ms', 'min_top1')
REQUEST_FIELDS = (*BUDGET_FIELDS, 'deadline_ms')  # a deadline is not a budget: the server still picks the stitch
IMAGE_TYPES = {'image/png': 'PNG', 'image/jpeg': 'JPEG', 'image/jpg': 'JPEG'}
MAX_BODY_BYTES = 10 << 20
MAX_PIXELS = 4096 * 4096
PIXELS_PER_INPUT = 256  # a decoded image may have up to 256x the pixels of the model's input (16x its side)
REQUEST_TIMEOUT_S = 10.0  # a client's time to send its headers, its body, or a next request on an idle connection
MAX_QUEUE = 256  # requests Ray queues for busy replicas; past it: 503 with Retry-After
AUTH_ENV = 'TIMM_SNNET_AUTH_TOKEN'
OPEN_PATHS = ('/health', '/-/healthz')  # liveness, answered without the token
_PROXY_HOOK = 'timm_snnet._serve:proxy_guard'
ARRIVED_HEADER = b'x-snnet-arrived'  # the proxy's arrival stamp (Unix time, s); a client's own is dropped there
_INSTALL_HINT = 'pip install "timm-snnet[serve]"'


def _ray_serve():
    # Ray is the optional `serve` extra (~80 MB): imported only when an app is built or run, so the package, its
    # controller and its tests import without it
    try:
        from ray import serve
    except ImportError as e:
        raise ImportError(f'Ray Serve is not installed: {_INSTALL_HINT}') from e
    return serve


class RequestError(SNNetError):
    """A bad request: `status` is the HTTP status (4xx), `str()` the one-line reason, `headers` extra ones."""

    def __init__(self, message: str, status: int = 400, headers: Optional[dict[str, str]] = None):
        super().__init__(message)
        self.status = status
        self.headers = headers


_repr = reprlib.Repr()
_repr.maxlevel, _repr.maxstring, _repr.maxother, _repr.maxlong = 2, 40, 40, 40


def _short(value: Any) -> str:
    """A client's value for a one-line error: long or deeply nested values shortened."""
    return _repr.repr(value)


# --- the controller (pure Python) ----------------------------------------------------------------------------------
def _latency_curve(row: dict) -> list[tuple[int, float]]:
    """(batch size, ms) points of a table row, from its `latency_ms_b{n}` keys."""
    points = []
    for key, value in row.items():
        n = key.removeprefix('latency_ms_b')
        if key.startswith('latency_ms_b') and n.isdigit() and isinstance(value, (int, float)):
            points.append((int(n), float(value)))
    return sorted(points)


def _interpolate(points: Sequence[tuple[int, float]], n: int) -> float:
    """Piecewise-linear in the batch size, extrapolated linearly past the ends (never below 0)."""
    if len(points) == 1:
        return points[0][1] * max(n, 1) / points[0][0] if n > points[0][0] else points[0][1]
    sizes = [b for b, _ in points]
    i = min(max(bisect.bisect_left(sizes, n), 1), len(points) - 1)
    (b0, t0), (b1, t1) = points[i - 1], points[i]
    return max(t0 + (t1 - t0) * (n - b0) / (b1 - b0), 0.0)


class StitchController:
    """Per batch, the most accurate stitch whose predicted latency fits a p95 SLO given the current queue wait.

    `rows` are stitch-table rows with `id`, `latency_ms_b{n}` for one or more batch sizes, and `top1` (ranked by it)
    or else `gflops` (larger is assumed more accurate). Predictions are scaled by a running ratio of measured to
    profiled compute time (`observe`), so a busier machine than at profiling time moves the choice down. `arrive`
    feeds the arrival rate over the last `rate_window_s` seconds, which predicts the queue a batch leaves behind.
    """

    def __init__(
            self,
            rows: Sequence[dict],
            slo_ms: float,
            max_batch_size: int = 32,
            margin: float = 0.2,
            hysteresis: float = 0.2,
            hold_s: float = 1.0,
            window: int = 500,
            rate_window_s: float = 1.0,
            max_utilization: float = 0.8,
            clock: Callable[[], float] = time.monotonic,
    ):
        if not (isinstance(slo_ms, (int, float)) and slo_ms > 0):
            raise ValueError(f'slo_ms must be a positive number, got {slo_ms!r}')
        curves = {int(r['id']): _latency_curve(r) for r in rows}
        missing = [k for k, c in curves.items() if not c]
        if not curves or missing:
            raise ValueError(f'the controller needs `latency_ms_b{{n}}` in every row; rows {missing[:5]} have none '
                             '(profile the model, or pass a table with latencies)')
        score = 'top1' if all(isinstance(r.get('top1'), (int, float)) for r in rows) else 'gflops'
        # most accurate first (ties: fewer GFLOPs, lower id)
        ranked = sorted(rows, key=lambda r: (-float(r.get(score) or 0.0), float(r.get('gflops') or 0.0), r['id']))
        self.ranking = [int(r['id']) for r in ranked]
        self.rows = {int(r['id']): dict(r) for r in rows}
        self.slo_ms = float(slo_ms)
        self.max_batch_size = max_batch_size
        self.margin, self.hysteresis, self.hold_s = margin, hysteresis, hold_s
        self.clock = clock
        self.scale = 1.0
        self._curves = curves
        self.fastest = min(self.ranking, key=lambda k: (_interpolate(curves[k], 1), self.ranking.index(k)))
        self.rate_window_s, self.max_utilization = rate_window_s, max_utilization
        self._arrivals: collections.deque = collections.deque()
        self.current = self.ranking[-1]
        self.switches, self._last_switch = 0, -math.inf
        self.current = self.choose(1)  # the start: the most accurate stitch that fits an idle server
        self.switches, self._last_switch = 0, -math.inf
        self._latencies: collections.deque = collections.deque(maxlen=window)
        self._total = self._met = 0

    def predict_ms(self, stitch_id: int, batch_size: int) -> float:
        """Predicted compute time of one batch (profiled curve times the measured/profiled ratio)."""
        return _interpolate(self._curves[stitch_id], batch_size) * self.scale

    def arrive(self) -> None:
        """A request arrived (for the arrival rate)."""
        now = self.clock()
        self._arrivals.append(now)
        while self._arrivals and self._arrivals[0] < now - self.rate_window_s:
            self._arrivals.popleft()

    def rate(self) -> float:
        """Arrivals per second over the last `rate_window_s` seconds."""
        now = self.clock()
        while self._arrivals and self._arrivals[0] < now - self.rate_window_s:
            self._arrivals.popleft()
        return len(self._arrivals) / self.rate_window_s

    def drain_ms(self, n: float) -> float:
        """Predicted time for the fastest stitch to serve `n` queued requests in full batches."""
        n = math.ceil(n)
        full, rest = divmod(n, self.max_batch_size)
        out = full * self.predict_ms(self.fastest, self.max_batch_size)
        return out + (self.predict_ms(self.fastest, rest) if rest else 0.0)

    def _times(self, k: int, batch_size: int, wait_ms: float, backlog: int, rate: float) -> tuple[float, float]:
        """(this batch's run, the run plus the time to serve the queue it leaves behind with the fastest stitch)."""
        run = self.predict_ms(k, batch_size)
        behind = backlog + rate * run / 1e3
        return run, run + (self.drain_ms(behind) if behind > 0 else 0.0)

    def _finish_ms(self, k: int, batch_size: int, wait_ms: float, backlog: int, rate: float) -> float:
        """Latency of the worst request this choice affects: the oldest of this batch, one queued behind it (served
        next by the fastest stitch), or, were `k` kept, the arrivals during this batch served next by `k` (inf when
        `k` cannot keep up with the arrival rate at `max_utilization`)."""
        run, then = self._times(k, batch_size, wait_ms, backlog, rate)
        per_request = self.predict_ms(k, max(batch_size, 1)) / max(batch_size, 1)
        if rate * per_request / 1e3 > self.max_utilization:
            return math.inf
        behind = rate * run / 1e3  # expected arrivals during this batch: a fraction of one costs that fraction
        return max(wait_ms + run, then, run + (self.predict_ms(k, behind) if behind >= 1 else
                                               behind * self.predict_ms(k, 1)))

    def choose(self, batch_size: int, wait_ms: float = 0.0, backlog: int = 0, deadline_ms: Optional[float] = None,
               queued_deadline_ms: Optional[float] = None) -> int:
        """The stitch for the next batch of `batch_size` requests, the oldest waiting `wait_ms`, `backlog` queued.

        `deadline_ms` / `queued_deadline_ms`: the least time left (ms, margin already taken) among the deadlines of
        this batch's requests / of those queued behind it. A deadline only narrows this batch's choice (the most
        accurate stitch, no better than the SLO's, predicted to meet it; else the fastest) and leaves the state alone.
        """
        rate = self.rate()
        k = self._choose_slo(batch_size, wait_ms, backlog, rate)
        if deadline_ms is None and queued_deadline_ms is None:
            return k
        for cand in self.ranking[self.ranking.index(k):]:
            run, then = self._times(cand, batch_size, wait_ms, backlog, rate)
            if run <= (math.inf if deadline_ms is None else deadline_ms) and (
                    queued_deadline_ms is None or then <= queued_deadline_ms):
                return cand
        return self.fastest

    def _choose_slo(self, batch_size: int, wait_ms: float, backlog: int, rate: float) -> int:
        budget = self.slo_ms * (1.0 - self.margin)
        finish = {k: self._finish_ms(k, batch_size, wait_ms, backlog, rate) for k in self.ranking}
        fits = [k for k in self.ranking if finish[k] <= budget]
        best = fits[0] if fits else min(self.ranking, key=finish.get)  # nothing fits: the fastest limits the damage
        rank = self.ranking.index
        if rank(best) < rank(self.current):  # slower and more accurate: only with headroom, and not too soon
            roomy = [k for k in fits if finish[k] <= budget * (1.0 - self.hysteresis)]
            if self.clock() - self._last_switch < self.hold_s or not roomy or rank(roomy[0]) >= rank(self.current):
                return self.current
            best = roomy[0]
        if best != self.current:
            self.current = best
            self.switches += 1
            self._last_switch = self.clock()
        return best

    def observe(self, stitch_id: int, batch_size: int, compute_ms: float) -> None:
        """A measured batch compute time: updates the measured/profiled ratio (running mean, clamped)."""
        raw = _interpolate(self._curves[stitch_id], batch_size) if stitch_id in self._curves else 0.0
        if raw > 0 and compute_ms > 0:
            self.scale = min(max(0.8 * self.scale + 0.2 * compute_ms / raw, 0.25), 8.0)

    def record(self, latency_ms: float, deadline_ms: Optional[float] = None) -> None:
        """A served request's latency (queue wait + compute) and deadline, for SLO (or deadline) attainment."""
        self._latencies.append(float(latency_ms))
        self._total += 1
        self._met += latency_ms <= (self.slo_ms if deadline_ms is None else deadline_ms)

    def metrics(self) -> dict[str, Any]:
        recent = sorted(self._latencies)
        out = dict(slo_ms=self.slo_ms, stitch_id=self.current, path=self.rows[self.current].get('path'),
                   top1_table=self.rows[self.current].get('top1'), switches=self.switches,
                   latency_scale=round(self.scale, 3), arrival_rate=round(self.rate(), 3), requests=self._total,
                   slo_attainment=self._met / self._total if self._total else None)
        if recent:
            out.update(window=len(recent), window_attainment=sum(v <= self.slo_ms for v in recent) / len(recent),
                       window_p50_ms=round(statistics.median(recent), 3),
                       window_p95_ms=round(recent[min(len(recent) - 1, int(0.95 * len(recent)))], 3))
        return out


# --- the served table ----------------------------------------------------------------------------------------------
def serving_table(
        model: torch.nn.Module,
        stitches: Optional[Sequence[int]] = None,
        batch_sizes: Sequence[int] = (1, 8, 32),
        latency_table: Optional[Sequence[dict]] = None,
        rounds: int = 3,
        threads: int = 1,
        accuracy_table: Optional[Sequence[dict]] = None,
) -> list[dict]:
    """Rows (id, path, gflops, params, top1/top5 when measured, latency_ms_b{n}) of the stitches to serve.

    Default stitches: the GFLOPs/top-1 Pareto front of the model's stitch table (or of `accuracy_table`, rows with
    `id` and `top1` that replace it, e.g. the authors' published results), else every config. Latencies come
    from `latency_table` (rows with `latency_ms_b{n}`) when given, else `profile` measures them now.
    """
    measured = {r['id']: r for r in (model.stitch_table if accuracy_table is None else accuracy_table) or []}
    if stitches is None:
        stitches = pareto_front(list(measured.values())) if measured else list(range(model.num_configs))
    stitches = sorted({model.check_id(k) for k in stitches})
    if latency_table is not None:
        given = {r['id']: r for r in latency_table}
        absent = [k for k in stitches if not _latency_curve(given.get(k, {}))]
        if absent:
            raise ValueError(f'the latency table has no latency_ms_b{{n}} for stitches {absent[:5]}')
        timed = [given[k] for k in stitches]
    else:
        timed = profile(model, stitches=stitches, batch_sizes=sorted(set(batch_sizes)), threads=threads,
                        rounds=rounds, warmup=2, min_run_time=0.05, progress=False)
    configs = model.stitch_configs()
    rows = []
    for k, t in zip(stitches, timed):
        c = configs[k]
        row = dict(id=k, path=model.describe(c), gflops=round(c.gflops, 6), params=int(c.params))
        row.update({key: measured[k][key] for key in ('top1', 'top5') if key in measured.get(k, {})})
        row.update({key: v for key, v in t.items() if key.startswith('latency_ms_b') and key != 'latency_ms_bN'})
        rows.append(row)
    return rows


def _labels(model: torch.nn.Module, labels: Optional[Sequence[str]]) -> list[str]:
    n = model.num_classes
    if labels is not None:
        if len(labels) != n:
            raise ValueError(f'{len(labels)} labels given for a model with {n} classes')
        return [str(v) for v in labels]
    names = (getattr(model, 'pretrained_cfg', None) or {}).get('label_names')
    if names and len(names) == n:
        return [str(v) for v in names]
    if n == 1000:
        return [str(v) for v in timm.data.ImageNetInfo().label_descriptions()]
    return [str(i) for i in range(n)]


# --- requests ------------------------------------------------------------------------------------------------------
def decode_image(data: bytes, mode: str, max_pixels: int = MAX_PIXELS):
    """A PNG or JPEG (sniffed from its bytes, never unpickled) as a PIL image in `mode`; RequestError when bad."""
    if not (data.startswith(b'\x89PNG\r\n\x1a\n') or data.startswith(b'\xff\xd8\xff')):
        raise RequestError('the body is not a PNG or JPEG image')
    try:
        with Image.open(io.BytesIO(data), formats=('PNG', 'JPEG')) as img:
            if img.width * img.height > max_pixels:
                raise RequestError(f'image of {img.width}x{img.height} pixels is over the limit of {max_pixels}',
                                   413)
            img.load()
            return img.convert(mode)
    except RequestError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise RequestError(f'corrupt image: {" ".join(str(e).split()) or type(e).__name__}') from None


def _number(name: str, value: Any) -> float:
    if isinstance(value, bool):
        raise RequestError(f'{name} must be a number, got {_short(value)}')
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise RequestError(f'{name} must be a number, got {_short(value)}') from None
    except OverflowError:  # an int past float's range, e.g. 10**400
        out = math.inf
    if not math.isfinite(out):
        raise RequestError(f'{name} must be a finite number, got {_short(value)}')
    return out


def parse_budget(fields: dict[str, Any], num_configs: int) -> dict[str, Any]:
    """The budget fields of a request, checked: `stitch_id` (int in range) or max_gflops/max_latency_ms/min_top1, or
    a `deadline_ms` (positive) alone."""
    unknown = sorted(set(fields) - set(REQUEST_FIELDS))
    if unknown:
        raise RequestError(f'unknown field {_short(unknown[0])}; fields are {", ".join(REQUEST_FIELDS)}')
    out: dict[str, Any] = {k: _number(k, v) for k, v in fields.items() if k != 'stitch_id' and v is not None}
    if 'deadline_ms' in out:
        if out['deadline_ms'] <= 0:
            raise RequestError(f'deadline_ms must be positive, got {fields["deadline_ms"]!r}')
        if len(out) > 1 or fields.get('stitch_id') is not None:
            raise RequestError('give either deadline_ms or a budget (stitch_id, max_gflops, max_latency_ms, '
                               'min_top1)')
    if fields.get('stitch_id') is not None:
        raw = fields['stitch_id']
        k = _number('stitch_id', raw)
        if k != int(k) or isinstance(raw, float) and not raw.is_integer():
            raise RequestError(f'stitch_id must be an integer, got {_short(raw)}')
        if not 0 <= k < num_configs:
            raise RequestError(f'stitch_id {int(k)} is out of range: valid ids are 0..{num_configs - 1}')
        if out:
            raise RequestError('give either stitch_id or budget fields (max_gflops, max_latency_ms, min_top1)')
        out['stitch_id'] = int(k)
    return out


_CLOSE = {'Connection': 'close'}  # uvicorn closes the connection after this answer: its unread body is dropped


async def _receive_body(receive: Callable, declared: str, limit: int, timeout_s: float) -> bytes:
    """An ASGI request body, complete within `timeout_s` (else 408) and at most `limit` bytes (else 413).

    Past the limit it reads on to 8x the limit, so a client that sends its body before reading gets the answer.
    """
    if declared.isdigit() and (len(declared) > 18 or int(declared) > 8 * limit):
        raise RequestError(f'body of {_short(declared)} bytes is over the limit of {limit}', 413, _CLOSE)
    chunks, size = [], 0

    async def collect() -> None:
        nonlocal size
        more = True
        while more and size <= 8 * limit:
            message = await receive()
            if message['type'] != 'http.request':
                raise RequestError('the client disconnected before its body was complete')
            chunk, more = message.get('body', b''), message.get('more_body', False)
            size += len(chunk)
            if size <= limit:
                chunks.append(chunk)

    try:
        await asyncio.wait_for(collect(), timeout_s)
    except asyncio.TimeoutError:
        raise RequestError(f'the body was not complete within the request timeout of {timeout_s:g} s', 408,
                           _CLOSE) from None
    if size > limit:
        raise RequestError(f'body is over the limit of {limit} bytes', 413, _CLOSE)
    return b''.join(chunks)


def _fields(items: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    """Query parameters or a JSON object's pairs as a dict; RequestError when a name is repeated."""
    out: dict[str, Any] = {}
    for key, value in items:
        if key in out:
            raise RequestError(f'field {_short(key)} is given more than once')
        out[key] = value
    return out


def _authorized(headers: list[tuple[bytes, bytes]], token: str) -> bool:
    """Whether raw ASGI `headers` carry `Authorization: Bearer <token>` (compared in constant time)."""
    given = [v for k, v in headers if k.lower() == b'authorization']
    return len(given) == 1 and hmac.compare_digest(given[0], b'Bearer ' + token.encode())


def _unauthorized() -> RequestError:
    return RequestError('missing or wrong bearer token: send Authorization: Bearer <token>', 401,
                        {'WWW-Authenticate': 'Bearer'})


def _left_ms(dues: Sequence[float], now: float) -> Optional[float]:
    """Milliseconds to the nearest of `dues` (monotonic times), None without any."""
    return (min(dues) - now) * 1e3 if dues else None


def _arrived(stamp: Optional[str], limit_s: float) -> float:
    """The request's arrival as a `time.monotonic()` time: the proxy's stamp (so the controller sees the time the
    request spent in the proxy and in Ray's routing), clamped to [now - `limit_s`, now]; now without a stamp."""
    now = time.monotonic()
    try:
        ago = time.time() - float(stamp) if stamp is not None else 0.0
    except ValueError:
        return now
    return now - min(max(ago, 0.0), limit_s) if math.isfinite(ago) else now


@dataclass(eq=False)
class _Item:
    x: torch.Tensor
    stitch_id: Optional[int]  # None: the server's choice (fixed stitch or the controller)
    arrived: float
    due: Optional[float] = None  # a deadline: the monotonic time to answer by, the controller's margin taken


class SNNetService:
    """The deployment: one SN-Net, requests batched by `@serve.batch`, the stitch per request or per batch.

    A request's `stitch_id` or budget (max_gflops / max_latency_ms / min_top1 over the served table, batch-1
    latencies) always wins; otherwise the controller (`slo_ms`) or the fixed `stitch_id` decides.
    """

    def __init__(
            self,
            model: str,
            rows: Sequence[dict],
            stitch_id: Optional[int] = None,
            slo_ms: Optional[float] = None,
            max_batch_size: int = 32,
            batch_wait_ms: float = 2.0,
            threads: int = 1,
            max_body_bytes: int = MAX_BODY_BYTES,
            labels: Optional[Sequence[str]] = None,
            controller: Optional[dict] = None,
            pretrained: bool = True,
            request_timeout_s: float = REQUEST_TIMEOUT_S,
    ):
        serve = _ray_serve()
        torch.set_num_threads(threads)
        self.model = load_snnet(model, pretrained=pretrained).eval()
        self.rows = [dict(r) for r in rows]
        self.table = {r['id']: r for r in (self.model.stitch_table or [])} | {r['id']: r for r in self.rows}
        self.stitch_id = self.model.stitch_id if stitch_id is None else self.model.check_id(stitch_id)
        self.controller = None if slo_ms is None else StitchController(
            self.rows, slo_ms, max_batch_size=max_batch_size, **(controller or {}))
        self.labels = _labels(self.model, labels)
        self.max_body_bytes, self.request_timeout_s = max_body_bytes, request_timeout_s
        self.token = os.environ.get(AUTH_ENV) or None  # also checked here for apps run without `proxy_guard`
        cfg = timm.data.resolve_model_data_config(self.model)
        self.mode = 'L' if cfg['input_size'][0] == 1 else 'RGB'
        self.max_pixels = min(MAX_PIXELS, PIXELS_PER_INPUT * cfg['input_size'][1] * cfg['input_size'][2])
        self.transform = timm.data.create_transform(**cfg, is_training=False)
        self.inflight = 0
        self.margin = (controller or {}).get('margin', 0.2)
        self._waiting: set[_Item] = set()  # requests taken, not yet answered (their deadlines)
        self.batched = serve.batch(max_batch_size=max_batch_size,
                                   batch_wait_timeout_s=batch_wait_ms / 1e3)(self._run_batch)

    # --- HTTP ----------------------------------------------------------------------------------------------------
    async def __call__(self, request):
        from starlette.responses import JSONResponse  # starlette comes with ray[serve]

        route = (request.method, request.url.path.rstrip('/') or '/')
        try:
            if self.token and route[1] not in OPEN_PATHS and not _authorized(request.scope['headers'], self.token):
                raise _unauthorized()
            if route == ('POST', '/predict'):
                return JSONResponse(await self.predict(request))
            if route == ('GET', '/stitches'):
                return JSONResponse(dict(rows=self.rows, mode=self._mode(), controller=self._metrics()))
            if route == ('GET', '/metrics'):
                return JSONResponse(self._metrics())
            if route == ('GET', '/health'):
                return JSONResponse(dict(status='ok'))
            known = {'/predict', '/stitches', '/metrics', '/health'}
            if route[1] in known:
                raise RequestError(f'{request.method} is not allowed on {route[1]}', 405)
            raise RequestError(f'no route {_short(route[1])}; routes: POST /predict, GET /stitches, /metrics, '
                               '/health', 404)
        except RequestError as e:
            return JSONResponse(dict(error=str(e)), status_code=e.status, headers=e.headers)
        except Exception as e:  # a bug or a failed forward: one line back, the server keeps serving
            return JSONResponse(dict(error=f'{type(e).__name__}: {" ".join(str(e).split())}'), status_code=500)

    async def predict(self, request) -> dict:
        arrived = _arrived(request.headers.get(ARRIVED_HEADER.decode()), self.request_timeout_s)
        ctype = request.headers.get('content-type', '').split(';')[0].strip().lower()
        fields = _fields(request.query_params.multi_items())
        if ctype not in IMAGE_TYPES and ctype != 'application/json':
            raise RequestError(f'unsupported content type {_short(ctype or "(none)")}: send image/png, image/jpeg or '
                               'application/json {"image": "<base64>"}', 415)
        body = await _receive_body(request.receive, request.headers.get('content-length', ''), self.max_body_bytes,
                                   self.request_timeout_s)
        x, extra = await asyncio.to_thread(self._decode, ctype, body)  # JSON, base64, pixels: off the event loop
        twice = sorted(set(fields) & set(extra))
        if twice:
            raise RequestError(f'field {_short(twice[0])} is given twice, as a query parameter and in the JSON body')
        fields.update(extra)
        budget = parse_budget(fields, self.model.num_configs)
        stitch = budget.pop('stitch_id', None)
        deadline_ms = budget.pop('deadline_ms', None)
        if deadline_ms is not None and self.controller is None:  # fixed mode: the best stitch its b1 time lets meet it
            stitch = self._fits_deadline(deadline_ms * (1.0 - self.margin))
        if budget:
            try:
                stitch = select_stitch(self.rows, latency='b1', **budget)
            except ValueError as e:
                raise RequestError(' '.join(str(e).split())) from None
        due = None if deadline_ms is None else arrived + deadline_ms * (1.0 - self.margin) / 1e3
        item = _Item(x, stitch, arrived, due)
        self.inflight += 1
        self._waiting.add(item)
        if self.controller is not None:
            self.controller.arrive()
        try:
            probs, k = await self.batched(item)
        finally:
            self.inflight -= 1
            self._waiting.discard(item)
        latency_ms = (time.monotonic() - arrived) * 1e3
        if self.controller is not None:
            self.controller.record(latency_ms, deadline_ms)
        row = self.table.get(k, {})
        top = torch.topk(probs, min(5, probs.numel()))
        out = dict(stitch_id=k, path=self.model.describe(self.model.stitch_configs()[k]),
                   gflops=row.get('gflops', self.model.stitch_configs()[k].gflops), top1_table=row.get('top1'),
                   latency_ms=round(latency_ms, 3),
                   predictions=[dict(label=self.labels[i], prob=round(float(p), 6))
                                for p, i in zip(top.values.tolist(), top.indices.tolist())])
        if deadline_ms is not None:  # a deadline nothing could meet was still answered (fastest stitch): a miss
            out['deadline_met'] = latency_ms <= deadline_ms
        return out

    def _fits_deadline(self, budget_ms: float) -> int:
        """The most accurate served stitch whose batch-1 latency fits `budget_ms`, else the fastest."""
        try:
            return select_stitch(self.rows, max_latency_ms=budget_ms, latency='b1')
        except ValueError:
            return min(self.rows, key=lambda r: r['latency_ms_b1'])['id']

    def _decode(self, ctype: str, body: bytes) -> tuple[torch.Tensor, dict]:
        """The model input and the JSON body's other fields (none for an image body)."""
        data, extra = self._json_image(body) if ctype == 'application/json' else (body, {})
        return self.transform(decode_image(data, self.mode, self.max_pixels)), extra

    @staticmethod
    def _json_image(body: bytes) -> tuple[bytes, dict]:
        try:
            doc = json.loads(body, object_pairs_hook=_fields)
        except RecursionError:
            raise RequestError('the body is not valid JSON: nested too deeply') from None
        except RequestError:
            raise
        except (UnicodeDecodeError, ValueError) as e:  # also an integer of more digits than Python converts
            raise RequestError(f'the body is not valid JSON: {" ".join(str(e).split())}') from None
        if not isinstance(doc, dict) or not isinstance(doc.get('image'), str):
            raise RequestError('a JSON body needs {"image": "<base64 PNG or JPEG>"}')
        try:
            data = base64.b64decode(doc.pop('image'), validate=True)
        except (binascii.Error, ValueError):
            raise RequestError('"image" is not valid base64') from None
        return data, doc

    # --- batches -------------------------------------------------------------------------------------------------
    async def _run_batch(self, items: list[_Item]) -> list[tuple[torch.Tensor, int]]:
        auto = [i for i, it in enumerate(items) if it.stitch_id is None]
        chosen = self.stitch_id
        if auto and self.controller is not None:
            now = time.monotonic()
            wait_ms = (now - min(items[i].arrived for i in auto)) * 1e3
            batch = set(items)
            chosen = self.controller.choose(
                len(auto), wait_ms, backlog=max(self.inflight - len(items), 0),
                deadline_ms=_left_ms([items[i].due for i in auto if items[i].due is not None], now),
                queued_deadline_ms=_left_ms([w.due for w in self._waiting if w not in batch and w.due is not None],
                                            now))
        groups: dict[int, list[int]] = {}
        for i, it in enumerate(items):
            groups.setdefault(chosen if it.stitch_id is None else it.stitch_id, []).append(i)
        out: list[Any] = [None] * len(items)
        for k, idx in groups.items():
            start = time.monotonic()
            probs = await asyncio.to_thread(self._forward, torch.stack([items[i].x for i in idx]), k)
            if self.controller is not None:
                self.controller.observe(k, len(idx), (time.monotonic() - start) * 1e3)
            for i, p in zip(idx, probs):
                out[i] = (p, k)
        return out

    @torch.inference_mode()
    def _forward(self, x: torch.Tensor, stitch_id: int) -> torch.Tensor:
        return self.model(x, stitch_id=stitch_id).float().softmax(-1)

    def _mode(self) -> str:
        return 'adaptive' if self.controller is not None else 'fixed'

    def _metrics(self) -> dict:
        base = dict(mode=self._mode(), stitch_id=self.stitch_id, inflight=self.inflight)
        return base | self.controller.metrics() if self.controller is not None else base


# --- in Ray's HTTP proxy -------------------------------------------------------------------------------------------
class _Guard:
    """ASGI middleware in Ray Serve's HTTP proxy: the bearer token, then the whole body within the request timeout,
    then the arrival stamp (`ARRIVED_HEADER`, replacing any the client sent) that the replica's latencies start from.

    Only complete, authorized requests reach a replica: a stalled upload holds a coroutine in the proxy until its
    deadline, never one of a replica's `max_ongoing_requests` slots.
    """

    def __init__(self, app, timeout_s: float, max_body_bytes: int, token: Optional[str] = None):
        self.app, self.timeout_s, self.max_body_bytes, self.token = app, timeout_s, max_body_bytes, token

    async def __call__(self, scope, receive, send):
        if scope['type'] != 'http':
            return await self.app(scope, receive, send)
        from starlette.responses import JSONResponse  # starlette comes with ray[serve]

        stamp = (ARRIVED_HEADER, repr(time.time()).encode())

        try:
            if self.token and scope['path'].rstrip('/') not in OPEN_PATHS and not _authorized(scope['headers'],
                                                                                               self.token):
                raise _unauthorized()
            declared = next((v.decode('latin-1') for k, v in scope['headers'] if k.lower() == b'content-length'), '')
            body = await _receive_body(receive, declared, self.max_body_bytes, self.timeout_s)
        except RequestError as e:
            return await JSONResponse(dict(error=str(e)), status_code=e.status, headers=e.headers)(scope, receive, send)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:  # after the body: wait for the client's disconnect
                return await receive()
            replayed = True
            return {'type': 'http.request', 'body': body, 'more_body': False}

        headers = [(k, v) for k, v in scope['headers'] if k.lower() != ARRIVED_HEADER]
        await self.app(dict(scope, headers=[*headers, stamp]), replay, send)


_BUSY = object()  # a connection's state at a check while a request runs


def _watch(conn, last: Any, timeout_s: float) -> None:
    """Close `conn` (a uvicorn connection) if, `timeout_s` from now, it is idle on the same request as now."""
    def check() -> None:
        if conn.transport.is_closing():
            return
        cycle = conn.cycle  # the current or last request; None before the first one's headers are complete
        idle = cycle is None or cycle.response_complete
        if idle and cycle is last:
            conn.transport.close()
        else:
            _watch(conn, cycle if idle else _BUSY, timeout_s)

    conn.loop.call_later(timeout_s, check)


def _close_silent_connections(timeout_s: float) -> None:
    """Make uvicorn close connections that send no complete request headers within `timeout_s`.

    uvicorn times out only keep-alive connections after a response: one that says nothing, or dribbles its headers,
    stays open for good. A watch on each connection closes it when no request ran or started for `timeout_s`.
    """
    from uvicorn.protocols.http import h11_impl, httptools_impl  # in Ray's proxy process

    for cls in (h11_impl.H11Protocol, httptools_impl.HttpToolsProtocol):
        if getattr(cls, '_snnet_watched', False):
            continue
        made = cls.connection_made

        def connection_made(self, transport, _made=made):
            _made(self, transport)
            _watch(self, None, timeout_s)

        cls.connection_made, cls._snnet_watched = connection_made, True


def proxy_guard() -> list:
    """Ray Serve's HTTP proxy callback (`RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH`, set by `start_serve`).

    Runs in the proxy process: times out silent connections and returns the `_Guard` middleware. Its settings come
    from `TIMM_SNNET_REQUEST_TIMEOUT_S`, `TIMM_SNNET_MAX_BODY_BYTES` and `TIMM_SNNET_AUTH_TOKEN`.
    """
    from starlette.middleware import Middleware  # starlette comes with ray[serve]

    timeout_s = float(os.environ.get('TIMM_SNNET_REQUEST_TIMEOUT_S', REQUEST_TIMEOUT_S))
    _close_silent_connections(timeout_s)
    return [Middleware(_Guard, timeout_s=timeout_s, token=os.environ.get(AUTH_ENV) or None,
                       max_body_bytes=int(os.environ.get('TIMM_SNNET_MAX_BODY_BYTES', MAX_BODY_BYTES)))]


# --- building and running ------------------------------------------------------------------------------------------
def _model_name(model: str) -> str:
    """`local-dir:` paths made absolute, so replicas (other processes, maybe another cwd) load the same folder."""
    if model.startswith('local-dir:'):
        return 'local-dir:' + os.path.abspath(os.path.expanduser(model.removeprefix('local-dir:')))
    return model


def build_app(
        model: str,
        replicas: int = 1,
        slo_ms: Optional[float] = None,
        stitch_id: Optional[int] = None,
        stitches: Optional[str | Sequence[int]] = None,
        max_batch_size: int = 32,
        batch_wait_ms: float = 2.0,
        threads: int = 1,
        latency_table: Optional[Sequence[dict]] = None,
        profile_rounds: int = 3,
        max_body_bytes: int = MAX_BODY_BYTES,
        labels: Optional[Sequence[str]] = None,
        controller: Optional[dict] = None,
        name: str = 'SNNet',
        pretrained: bool = True,
        accuracy_table: Optional[Sequence[dict]] = None,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
        max_queue: int = MAX_QUEUE,
):
    """The bound Ray Serve app for `serve.run(build_app('local-dir:...', slo_ms=50))`.

    The model is loaded (and its served stitches profiled, unless `latency_table` is given) here, in the calling
    process, so a model that fails to load raises before anything binds. `stitches`: ids or a range spec ('0-2,5',
    'all'); default the Pareto front of the stitch table. `slo_ms` turns on the adaptive controller.
    `pretrained=False` serves random weights (latency studies); `accuracy_table` (rows with `id`, `top1`) replaces the
    model's stitch table for ranking and answers (e.g. the authors' published results for a model without weights).
    `request_timeout_s`: a request's body must arrive within it (else 408); `max_queue`: requests Ray queues for busy
    replicas, past which it answers 503 with Retry-After at once.
    """
    serve = _ray_serve()
    if replicas < 1 or max_batch_size < 1 or threads < 1:
        raise ValueError(f'replicas, max_batch_size and threads must be >= 1, got {replicas}, {max_batch_size}, '
                         f'{threads}')
    if batch_wait_ms < 0:
        raise ValueError(f'batch_wait_ms must be >= 0, got {batch_wait_ms}')
    if not request_timeout_s > 0 or max_queue < 1:
        raise ValueError(f'request_timeout_s must be > 0 and max_queue >= 1, got {request_timeout_s}, {max_queue}')
    model = _model_name(model)
    torch.set_num_threads(threads)
    net = load_snnet(model, pretrained=pretrained).eval()
    _labels(net, labels)
    if isinstance(stitches, str):
        stitches = parse_stitches(stitches, net.num_configs)
    if stitch_id is not None:
        stitch_id = net.check_id(stitch_id)
        stitches = sorted({*(stitches if stitches is not None else _default_ids(net, accuracy_table)), stitch_id})
    rows = serving_table(net, stitches, batch_sizes=(1, 8, max_batch_size), latency_table=latency_table,
                         rounds=profile_rounds, threads=threads, accuracy_table=accuracy_table)
    if slo_ms is not None:
        StitchController(rows, slo_ms, max_batch_size=max_batch_size, **(controller or {}))  # checks the arguments
    deployment = serve.deployment(SNNetService).options(
        name=name, num_replicas=replicas, ray_actor_options=dict(num_cpus=threads),
        max_ongoing_requests=max(64, 4 * max_batch_size), max_queued_requests=max_queue, **_retry_after(1))
    return deployment.bind(model, rows, stitch_id=stitch_id, slo_ms=slo_ms, max_batch_size=max_batch_size,
                           batch_wait_ms=batch_wait_ms, threads=threads, max_body_bytes=max_body_bytes,
                           labels=list(labels) if labels is not None else None, controller=controller,
                           pretrained=pretrained, request_timeout_s=request_timeout_s)


def _retry_after(seconds: int) -> dict:
    """Deployment options for a `Retry-After` on Ray's 503 past `max_queued_requests` (Ray versions that have it)."""
    try:
        from ray.serve.config import BackpressureConfig
    except ImportError:
        return {}
    return dict(backpressure_config=BackpressureConfig(retry_after_s=seconds))


def _default_ids(net: torch.nn.Module, accuracy_table: Optional[Sequence[dict]] = None) -> list[int]:
    measured = net.stitch_table if accuracy_table is None else accuracy_table
    return pareto_front(measured) if measured else list(range(net.num_configs))


def app_builder(args: dict):
    """For Ray Serve config files: `import_path: timm_snnet._serve:app_builder`, `args: {model: ..., slo_ms: ...}`.

    `args` are `build_app`'s keyword arguments; `latency_table` may also be the path of a sweep.json.
    """
    args = dict(args)
    if 'model' not in args:
        raise ValueError('app_builder needs args: {model: NAME}')
    table = args.get('latency_table')
    if isinstance(table, (str, os.PathLike)):
        args['latency_table'] = load_latency_table(table)
    return build_app(**args)


def load_latency_table(path: str | os.PathLike) -> list[dict]:
    """Rows of a sweep.json (or a JSON list of rows) with `latency_ms_b{n}` keys."""
    with open(path) as f:
        doc = json.load(f)
    rows = doc.get('rows') if isinstance(doc, dict) else doc
    if not isinstance(rows, list) or not all(isinstance(r, dict) and 'id' in r for r in rows):
        raise ValueError(f'{path} holds no stitch table rows (a JSON list, or a sweep.json with "rows")')
    return rows


def check_port(host: str, port: int) -> None:
    """ValueError now when `host:port` cannot be bound (Ray's proxy would otherwise retry in the background)."""
    with socket.socket(socket.AF_INET6 if ':' in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind: connections in TIME_WAIT are fine
        try:
            s.bind((host, port))
        except OSError as e:
            raise ValueError(f'cannot listen on {host}:{port}: {e.strerror or e}') from None


def _is_loopback(host: str) -> bool:
    try:
        return host == 'localhost' or ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name
        return False


def start_serve(host: str = '127.0.0.1', port: int = 8000, num_cpus: Optional[int] = None,
                request_timeout_s: float = REQUEST_TIMEOUT_S, max_body_bytes: int = MAX_BODY_BYTES,
                auth_token: Optional[str] = None) -> int:
    """A fresh local Ray (no dashboard) with Serve's HTTP proxy on host:port; `serve.run` apps next. Returns the
    port: with port 0, a free one picked once Ray's own processes hold theirs (an ephemeral port picked before could
    be the one Ray's agent takes).

    The proxy runs `proxy_guard`: clients get `request_timeout_s` for their headers, their body (at most
    `max_body_bytes`) and between requests; with `auth_token` (or `TIMM_SNNET_AUTH_TOKEN`) every route but /health
    needs `Authorization: Bearer <token>`. Without a token only a loopback host is allowed.
    """
    serve = _ray_serve()
    import ray  # installed with ray[serve], checked above

    auth_token = auth_token or os.environ.get(AUTH_ENV) or None
    if not _is_loopback(host) and not auth_token:
        raise ValueError(f'refusing to listen on {host} without a bearer token: pass --auth-token or set {AUTH_ENV} '
                         '(or listen on 127.0.0.1)')
    if not request_timeout_s > 0:
        raise ValueError(f'request_timeout_s must be > 0, got {request_timeout_s}')
    check_port(host, port)
    os.environ.setdefault('RAY_USAGE_STATS_ENABLED', '0')  # no usage report leaves the machine
    # Ray's processes inherit these: the proxy loads `proxy_guard` (which imports torch: give it time to be ready)
    os.environ.update({'RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH': _PROXY_HOOK,
                       'TIMM_SNNET_REQUEST_TIMEOUT_S': str(request_timeout_s),
                       'TIMM_SNNET_MAX_BODY_BYTES': str(max_body_bytes)})
    os.environ.setdefault('RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S', '30')
    if auth_token:
        os.environ[AUTH_ENV] = auth_token
    ray.init(address='local', num_cpus=num_cpus, include_dashboard=False, _node_ip_address='127.0.0.1',
             log_to_driver=False, configure_logging=False)
    if port == 0:
        with socket.socket(socket.AF_INET6 if ':' in host else socket.AF_INET) as s:
            s.bind((host, 0))
            port = s.getsockname()[1]
    serve.start(http_options=dict(host=host, port=port, keep_alive_timeout_s=max(1, math.ceil(request_timeout_s))))
    return port


def stop_serve() -> None:
    """Shut down Serve (its proxy stops listening) and the local Ray."""
    serve = _ray_serve()
    import ray  # installed with ray[serve], checked above

    try:
        if ray.is_initialized():
            serve.shutdown()
    finally:
        ray.shutdown()


def serve_forever(app, host: str = '127.0.0.1', port: int = 8000, num_cpus: Optional[int] = None,
                  ready: Optional[Callable[[], None]] = None, stop: Optional[threading.Event] = None,
                  **guard: Any) -> None:
    """Serve `app` on http://host:port/ on a local Ray until SIGINT/SIGTERM (or `stop`), then shut everything down.

    `guard`: `start_serve`'s request_timeout_s, max_body_bytes, auth_token.
    """
    stop = stop or threading.Event()
    handlers = {}
    try:
        start_serve(host, port, num_cpus, **guard)
        if threading.current_thread() is threading.main_thread():  # after ray.init, which installs its own
            handlers = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
        _ray_serve().run(app, name='snnet', route_prefix='/')
        if ready is not None and not stop.is_set():
            ready()
        while not stop.wait(0.5):
            pass
    finally:
        try:
            stop_serve()
        finally:
            for s, h in handlers.items():
                signal.signal(s, h)
