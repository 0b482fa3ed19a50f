"""`timm-snnet serve` (issue #22): the stitch controller on a fake clock, request parsing, and one live server.

The live server is the real CLI in a subprocess (one Ray start-up for the module) on 127.0.0.1 and a free port,
serving the shipped Fashion-MNIST SN-Net in adaptive mode; the last test stops it with SIGTERM.
"""
from __future__ import annotations

import base64
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from PIL import Image
from safetensors.torch import load_file

from timm_snnet import pareto_front
from timm_snnet._serve import (
    ARRIVED_HEADER,
    RequestError,
    StitchController,
    _arrived,
    _Guard,
    check_port,
    decode_image,
    parse_budget,
)

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / 'examples' / 'fashion_mnist' / 'model'
TABLE = {r['id']: r for r in json.loads((MODEL / 'config.json').read_text())['model_args']['stitch_table']}
FRONT = [TABLE[k] for k in pareto_front(list(TABLE.values()), 'gflops', 'top1')]  # what serve serves by default
# idle, a request spends ~12 ms in Ray's proxy and routing (counted from the proxy's stamp) before B's 3.5 ms:
# the SLO leaves B room to fit with the controller's margin and hysteresis on a busy CI machine
SLO_MS = 60.0
MAX_BODY = 50_000  # --max-body-mb below, in bytes (rounded down)
TIMEOUT_S = 2.0  # --request-timeout-s
MAX_QUEUE = 16  # --max-queue
TOKEN = 'test-token'  # TIMM_SNNET_AUTH_TOKEN of the live server

# Ti / S / B with the shape of the shipped model's latencies (ms at batch 1, 8, 32)
ROWS = [
    dict(id=0, path='Ti', gflops=0.0028, top1=83.5, latency_ms_b1=1.5, latency_ms_b8=2.5, latency_ms_b32=5.0),
    dict(id=1, path='S', gflops=0.0107, top1=85.5, latency_ms_b1=2.0, latency_ms_b8=4.0, latency_ms_b32=10.0),
    dict(id=2, path='B', gflops=0.0414, top1=86.4, latency_ms_b1=6.5, latency_ms_b8=15.0, latency_ms_b32=48.0),
]


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


# --- the controller ------------------------------------------------------------------------------------------------
def test_controller_follows_load_with_hysteresis():
    clock = FakeClock()
    c = StitchController(ROWS, slo_ms=30, margin=0.1, hysteresis=0.2, hold_s=1.0, clock=clock)
    assert c.current == 2 and c.choose(1) == 2  # idle: the most accurate
    assert c.choose(8, wait_ms=5) == 2  # 5 + 15 <= 27
    assert c.choose(16, wait_ms=5) == 1  # B at 16 (~26 ms) + 5 > 27: down at once, to the best that fits
    assert c.choose(32, wait_ms=20) == 0  # only Ti fits
    assert c.choose(32, wait_ms=40) == 0  # nothing fits: the fastest
    assert c.switches == 2
    # load drops: no way back up within hold_s, however idle
    clock.t += 0.5
    assert c.choose(1) == 0
    clock.t += 0.6
    assert c.choose(1) == 2 and c.switches == 3
    # near the edge: B fits (23 <= 27) but without 20% headroom (> 21.6), so a step down is not undone
    assert c.choose(8, wait_ms=13) == 1
    clock.t += 5
    assert [c.choose(8, wait_ms=8) for _ in range(10)] == [1] * 10
    assert c.choose(8, wait_ms=6) == 2 and c.switches == 5  # 21 <= 21.6: headroom, so up (hold_s has passed)
    # a queue behind this batch counts: B now (6.5 ms), then Ti for the 150 queued (24 ms) is too late
    clock.t += 5
    assert c.choose(1, wait_ms=0, backlog=40) == 2 and c.choose(1, wait_ms=0, backlog=150) == 1


def test_controller_calibrates_and_reports():
    clock = FakeClock()
    c = StitchController(ROWS, slo_ms=30, margin=0.1, clock=clock)
    for _ in range(20):  # the machine runs 3x slower than profiled
        c.observe(2, 8, 45.0)
    assert 2.5 < c.scale < 3.1
    assert c.choose(8) == 1  # B at 8: 45 ms > 27
    for ms in (10, 20, 40, 50):
        c.record(ms)
    m = c.metrics()
    assert m['slo_ms'] == 30 and m['stitch_id'] == 1 and m['path'] == 'S' and m['top1_table'] == 85.5
    assert m['requests'] == 4 and m['slo_attainment'] == 0.5 and m['window_p95_ms'] == 50
    json.dumps(m)


def test_controller_rejects_bad_tables():
    with pytest.raises(ValueError, match='latency_ms_b'):
        StitchController([dict(id=0, top1=1.0)], slo_ms=10)
    with pytest.raises(ValueError, match='slo_ms'):
        StitchController(ROWS, slo_ms=0)
    # without top-1, larger GFLOPs rank as more accurate
    rows = [{k: v for k, v in r.items() if k != 'top1'} for r in ROWS]
    assert StitchController(rows, slo_ms=100).ranking == [2, 1, 0]


# --- request parsing -----------------------------------------------------------------------------------------------
def _png(array) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, 'PNG')
    return buf.getvalue()


def test_parse_budget_and_decode():
    assert parse_budget({'stitch_id': '3'}, 71) == {'stitch_id': 3}
    assert parse_budget({'max_gflops': '0.02', 'min_top1': 85}, 71) == {'max_gflops': 0.02, 'min_top1': 85.0}
    for fields, match in (({'stitch_id': 71}, 'out of range'), ({'stitch_id': '1.5'}, 'integer'),
                          ({'max_gflops': 'x'}, 'number'), ({'max_gflop': 1}, 'unknown field'),
                          ({'stitch_id': 1, 'min_top1': 80}, 'either'), ({'max_latency_ms': 'nan'}, 'finite')):
        with pytest.raises(RequestError, match=match):
            parse_budget(fields, 71)
    img = decode_image(_png(load_file(MODEL / 'test_images.safetensors')['images'][0].numpy()), 'L')
    assert img.size == (28, 28) and img.mode == 'L'
    with pytest.raises(RequestError, match='not a PNG or JPEG'):
        decode_image(b'\x80\x04pickle', 'L')


def test_proxy_stamps_arrival_and_the_replica_clamps_it():
    import asyncio

    seen = {}

    async def app(scope, receive, send):
        seen['headers'] = scope['headers']
        seen['body'] = (await receive())['body']

    async def receive():
        return {'type': 'http.request', 'body': b'img', 'more_body': False}

    spoofed = [(b'content-length', b'3'), (b'X-SNNet-Arrived', b'0'), (ARRIVED_HEADER, b'1e9')]
    before = time.time()
    asyncio.run(_Guard(app, timeout_s=1.0, max_body_bytes=10)({'type': 'http', 'path': '/predict',
                                                                'headers': spoofed}, receive, None))
    stamps = [v for k, v in seen['headers'] if k.lower() == ARRIVED_HEADER]
    assert seen['body'] == b'img' and len(stamps) == 1 and before <= float(stamps[0]) <= time.time()
    # the replica: the stamp moves the arrival back; none, garbage, the future or too old are clamped
    now = time.monotonic()
    assert now - 0.3 < _arrived(repr(time.time() - 0.2), 10.0) < now - 0.1
    for stamp in (None, 'x', 'nan', repr(time.time() + 100)):
        assert now <= _arrived(stamp, 10.0) <= time.monotonic()
    assert now - 10.5 < _arrived('0', 10.0) < now - 9.5


def test_port_in_use_is_a_value_error():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        s.listen()
        with pytest.raises(ValueError, match='cannot listen'):
            check_port('127.0.0.1', s.getsockname()[1])


def test_bad_model_fails_before_anything_binds(tmp_path, capsys):
    import ray

    from timm_snnet.cli import CommandError, main

    port = _free_port()
    with pytest.raises(CommandError):
        main(['serve', f'local-dir:{tmp_path / "missing"}', '--port', str(port)])
    err = capsys.readouterr().err.strip()
    assert err.startswith('timm-snnet serve: ') and '\n' not in err and 'missing' in err
    assert not ray.is_initialized()
    check_port('127.0.0.1', port)  # still free


def test_build_app_from_python():
    from ray.serve import Application

    from timm_snnet._serve import app_builder, build_app

    app = build_app(f'local-dir:{MODEL}', slo_ms=SLO_MS, stitches='0-2', latency_table=ROWS)
    assert isinstance(app, Application)
    assert isinstance(app_builder({'model': f'local-dir:{MODEL}', 'stitch_id': 1, 'stitches': '0-2',
                                   'latency_table': ROWS}),
                      Application)
    with pytest.raises(ValueError, match='latency_ms_b'):  # by default it serves the table's Pareto front
        build_app(f'local-dir:{MODEL}', latency_table=ROWS)


# --- the live server -----------------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


@pytest.fixture(scope='module')
def server(tmp_path_factory):
    port = _free_port()
    log = tmp_path_factory.mktemp('serve') / 'server.log'
    cmd = [sys.executable, '-m', 'timm_snnet.cli', 'serve', f'local-dir:{MODEL}', '--port', str(port),
           '--slo-ms', str(SLO_MS), '--max-batch-size', '32', '--profile-rounds', '1', '--max-body-mb',
           str(MAX_BODY / (1 << 20)), '--request-timeout-s', str(TIMEOUT_S), '--max-queue', str(MAX_QUEUE)]
    with open(log, 'wb') as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                env={**os.environ, 'HF_HUB_OFFLINE': '1', 'TIMM_SNNET_AUTH_TOKEN': TOKEN})
    url = f'http://127.0.0.1:{port}'
    deadline = time.monotonic() + 120
    while True:
        if proc.poll() is not None:
            pytest.fail(f'server exited with {proc.returncode}:\n{log.read_text()[-3000:]}')
        try:
            if _call(url, '/health')[0] == 200:
                break
        except (OSError, ValueError):  # not listening yet, or Ray's proxy answering before the app is deployed
            pass
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f'server not up in 120 s:\n{log.read_text()[-3000:]}')
        time.sleep(0.5)
    yield dict(url=url, proc=proc, log=log, port=port)
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()


def _call(url: str, path: str, data: bytes | None = None, ctype: str | None = None, method: str | None = None,
          token: str | None = TOKEN):
    headers = {'Content-Type': ctype} if ctype else {}
    if token is not None:
        headers['Authorization'] = f'Bearer {token}'
    req = urllib.request.Request(url + path, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=30) as f:
            return f.status, json.loads(f.read())
    except urllib.error.HTTPError as e:
        body = e.read()
        try:
            return e.code, json.loads(body)
        except ValueError:  # not ours: e.g. Ray's proxy while the app deploys
            return e.code, {'error': body.decode(errors='replace')}


@pytest.fixture(scope='module')
def images():
    data = load_file(MODEL / 'test_images.safetensors')
    return [(_png(data['images'][i].numpy()), int(data['labels'][i])) for i in range(64)]


def test_health_and_table(server):
    assert _call(server['url'], '/health') == (200, {'status': 'ok'})
    status, doc = _call(server['url'], '/stitches')
    assert status == 200 and doc['mode'] == 'adaptive'
    assert sorted(r['id'] for r in doc['rows']) == sorted(r['id'] for r in FRONT)
    assert len(FRONT) > 3 and {'Ti', 'S', 'B'} < {r['path'] for r in doc['rows']}  # stitches are served too
    assert all(r['latency_ms_b1'] > 0 and r['latency_ms_b32'] > 0 and r['top1'] == TABLE[r['id']]['top1']
               for r in doc['rows'])
    assert doc['controller']['slo_ms'] == SLO_MS


def test_predict_raw_json_and_budgets(server, images):
    url = server['url']
    png, label = images[0]
    status, doc = _call(url, '/predict?stitch_id=2', png, 'image/png')
    assert status == 200, doc
    assert set(doc) == {'stitch_id', 'path', 'gflops', 'top1_table', 'latency_ms', 'predictions'}
    assert (doc['stitch_id'], doc['path'], doc['top1_table']) == (2, 'B', TABLE[2]['top1'])
    assert len(doc['predictions']) == 5 and doc['predictions'][0]['label'] == str(label)
    assert abs(sum(p['prob'] for p in doc['predictions']) - 1) < 0.2
    jpeg = io.BytesIO()
    Image.open(io.BytesIO(png)).save(jpeg, 'JPEG', quality=95)
    body = json.dumps({'image': base64.b64encode(jpeg.getvalue()).decode(), 'stitch_id': 0}).encode()
    status, doc = _call(url, '/predict', body, 'application/json')
    assert status == 200 and doc['path'] == 'Ti' and doc['predictions'][0]['label'] == str(label)
    assert _call(url, '/predict?stitch_id=37', png, 'image/png')[1]['stitch_id'] == 37  # any id, not only served
    # a client's own arrival stamp is dropped by the proxy (were it used, the latency would be clamped to 2 s)
    headers = {'Content-Type': 'image/png', 'Authorization': f'Bearer {TOKEN}', ARRIVED_HEADER.decode(): '0'}
    with urllib.request.urlopen(urllib.request.Request(url + '/predict', png, headers), timeout=30) as f:
        assert json.loads(f.read())['latency_ms'] < 0.5 * TIMEOUT_S * 1e3
    best = max((r for r in FRONT if r['gflops'] <= 0.02), key=lambda r: r['top1'])
    assert _call(url, '/predict?max_gflops=0.02', png, 'image/png')[1]['path'] == best['path']
    assert _call(url, '/predict?min_top1=86', png, 'image/png')[1]['path'] == 'B'
    body = json.dumps({'image': base64.b64encode(png).decode(), 'min_top1': 84, 'max_gflops': 0.005}).encode()
    assert _call(url, '/predict', body, 'application/json') == (400, {'error': _call(
        url, '/predict?min_top1=84&max_gflops=0.005', png, 'image/png')[1]['error']})
    status, doc = _call(url, '/predict?max_latency_ms=0.001', png, 'image/png')
    assert status == 400 and 'no config fits' in doc['error']


def test_concurrent_requests_batch_and_agree(server, images):
    url = server['url']

    def fixed(item):
        return _call(url, '/predict?stitch_id=1', item[0], 'image/png')

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(fixed, images))
    assert all(s == 200 and d['stitch_id'] == 1 for s, d in answers)
    # batched answers are the answers one at a time
    for (png, _), (_, doc) in list(zip(images, answers))[:3]:
        alone = _call(url, '/predict?stitch_id=1', png, 'image/png')[1]
        assert [p['label'] for p in alone['predictions']] == [p['label'] for p in doc['predictions']]
        assert abs(alone['predictions'][0]['prob'] - doc['predictions'][0]['prob']) < 1e-4
    accuracy = sum(d['predictions'][0]['label'] == str(label) for (_, label), (_, d) in zip(images, answers))
    assert accuracy >= 0.7 * len(images)


def test_adaptive_stitch_follows_load(server, images):
    url = server['url']
    # idle (the last test's burst out of the controller's 1 s rate window and 1 s hold): the most accurate, B
    deadline, path = time.monotonic() + 10, None
    while path != 'B' and time.monotonic() < deadline:
        time.sleep(1.0)
        path = _call(url, '/predict', images[0][0], 'image/png')[1]['path']
    assert path == 'B'
    with ThreadPoolExecutor(48) as pool:  # a burst far over what B can serve within the SLO
        answers = list(pool.map(lambda i: _call(url, '/predict', images[i % 64][0], 'image/png'), range(192)))
    # Ray's router answers 503 past MAX_QUEUE unassigned requests (test_full_queue_answers_503_at_once): a burst may
    # meet it before the replica is full
    served = [d for s, d in answers if s == 200]
    assert {s for s, _ in answers} <= {200, 503} and len(served) >= len(answers) // 2, [s for s, _ in answers]
    assert {d['path'] for d in served} - {'B'}, 'the controller never stepped down under load'
    status, m = _call(url, '/metrics')
    assert status == 200 and m['mode'] == 'adaptive' and m['switches'] >= 1 and m['requests'] >= len(served) + 1
    assert 0 <= m['slo_attainment'] <= 1 and m['path'] in {r['path'] for r in FRONT}


def test_bad_input_gets_4xx_and_server_keeps_serving(server, images):
    url, png = server['url'], images[0][0]
    cases = [
        (('/predict', b'not an image at all', 'image/png'), 400, 'not a PNG or JPEG'),
        (('/predict', png[: len(png) // 2], 'image/png'), 400, 'corrupt image'),
        (('/predict', b'\x89PNG\r\n\x1a\n' + b'\0' * 64, 'image/png'), 400, 'corrupt image'),
        (('/predict', png, 'text/plain'), 415, 'unsupported content type'),
        (('/predict', png, None), 415, 'unsupported content type'),
        (('/predict', b'\0' * (MAX_BODY + 1000), 'image/png'), 413, 'over the limit'),
        (('/predict?stitch_id=71', png, 'image/png'), 400, 'out of range'),
        (('/predict?stitch_id=-1', png, 'image/png'), 400, 'out of range'),
        (('/predict?max_gflops=abc', png, 'image/png'), 400, 'must be a number'),
        (('/predict', b'{"image": 1', 'application/json'), 400, 'not valid JSON'),
        (('/predict', b'{"image": "%%%"}', 'application/json'), 400, 'not valid base64'),
        (('/predict', json.dumps({'image': base64.b64encode(b'\x80\x04K\x01.').decode()}).encode(),
          'application/json'), 400, 'not a PNG or JPEG'),
        (('/nowhere', None, None), 404, 'no route'),
    ]
    for args, code, reason in cases:
        status, doc = _call(server['url'], *args)
        assert status == code and reason in doc['error'] and '\n' not in doc['error'], (args[0], status, doc)
    assert _call(url, '/predict', method='GET')[0] == 405
    assert _call(url, '/predict?stitch_id=0', png, 'image/png')[0] == 200


def test_hostile_input_gets_one_line_4xx(server, images):
    url, png = server['url'], images[0][0]
    b64 = base64.b64encode(png).decode()
    big = io.BytesIO()
    Image.new('L', (500, 500)).save(big, 'PNG')  # 250k pixels: over 256x the model's 28x28 input

    def doc(extra: str) -> bytes:
        return f'{{"image": "{b64}", {extra}}}'.encode()

    cases = [
        (('/predict', b'[' * 20_000 + b']' * 20_000, 'application/json'), 400, 'nested too deeply'),
        (('/predict', doc('"stitch_id": 1' + '0' * 400), 'application/json'), 400, 'finite number'),
        (('/predict', doc('"stitch_id": 1' + '0' * 5000), 'application/json'), 400, 'not valid JSON'),
        (('/predict', doc('"max_gflops": [[[[[[1]]]]]]'), 'application/json'), 400, 'must be a number'),
        (('/predict', doc('"stitch_id": 1, "stitch_id": 2'), 'application/json'), 400, 'more than once'),
        (('/predict?stitch_id=1', doc('"stitch_id": 2'), 'application/json'), 400, 'given twice'),
        (('/predict?stitch_id=1' + '0' * 400, png, 'image/png'), 400, 'finite number'),
        (('/predict?stitch_id=1&stitch_id=2', png, 'image/png'), 400, 'more than once'),
        (('/predict?' + 'x' * 5000 + '=1', png, 'image/png'), 400, 'unknown field'),
        (('/predict', big.getvalue(), 'image/png'), 413, 'over the limit'),
    ]
    for args, code, reason in cases:
        status, answer = _call(url, *args)
        assert status == code and reason in answer['error'], (args[0][:40], status, answer)
        assert '\n' not in answer['error'] and len(answer['error']) < 200, answer
    assert _call(url, '/predict?stitch_id=0', png, 'image/png')[0] == 200


def _answer(sock: socket.socket) -> tuple[int, dict[str, str]]:
    """Status and headers of the one response on `sock` (read to the end)."""
    data = b''
    while chunk := sock.recv(65536):
        data += chunk
    head = data.split(b'\r\n\r\n')[0].decode().split('\r\n')
    return int(head[0].split()[1]), {k.lower(): v.strip() for k, v in (line.split(':', 1) for line in head[1:])}


def test_bearer_token(server, images):
    url, png = server['url'], images[0][0]
    for token in (None, 'wrong'):
        status, answer = _call(url, '/predict', png, 'image/png', token=token)
        assert status == 401 and 'bearer token' in answer['error']
        assert _call(url, '/stitches', token=token)[0] == 401
    assert _call(url, '/health', token=None) == (200, {'status': 'ok'})
    with socket.create_connection(('127.0.0.1', server['port']), timeout=30) as s:
        s.sendall(b'GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n')
        code, headers = _answer(s)
    assert code == 401 and headers.get('www-authenticate') == 'Bearer'


def test_public_host_needs_a_token(monkeypatch):
    import ray

    from timm_snnet._serve import start_serve

    monkeypatch.delenv('TIMM_SNNET_AUTH_TOKEN', raising=False)
    with pytest.raises(ValueError, match='without a bearer token'):
        start_serve('0.0.0.0', _free_port())
    assert not ray.is_initialized()


def _request(png: bytes, query: str = '') -> bytes:
    return (f'POST /predict{query} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}\r\n'
            f'Content-Type: image/png\r\nContent-Length: {len(png)}\r\nConnection: close\r\n\r\n').encode() + png


def test_full_queue_answers_503_at_once(server, images):
    # 256 requests at once for the slowest stitch: Ray queues MAX_QUEUE for the replica (which holds up to 128) and
    # answers the rest 503 (it counts requests not yet assigned, so a burst sees 503s before the replica is full)
    socks = [socket.create_connection(('127.0.0.1', server['port']), timeout=60) for _ in range(256)]
    try:
        for s in socks:
            s.sendall(_request(images[0][0], '?stitch_id=2'))
        answers = [_answer(s) for s in socks]
    finally:
        for s in socks:
            s.close()
    codes = [code for code, _ in answers]
    assert set(codes) <= {200, 503} and codes.count(503) > 0 and codes.count(200) >= MAX_QUEUE, codes
    assert all(headers.get('retry-after') == '1' for code, headers in answers if code == 503)
    assert _call(server['url'], '/predict', images[0][0], 'image/png')[0] == 200


def test_stalled_clients_are_cut_off_while_valid_traffic_is_served(server, images):
    """Issue 28: 150 stalled uploads (128 used to block every request), 100 silent connections and 50 that never
    finish their headers: /health and /predict answer within their SLO, and the server closes every stalled one
    within the request timeout (the uploads with a 408)."""
    url, png = server['url'], images[0][0]
    upload = _request(png)
    stalls = {'upload': upload[:-len(png) // 2], 'silent': b'', 'headers': upload[:40]}
    counts = {'upload': 150, 'silent': 100, 'headers': 50}
    start = time.monotonic()
    stalled = []
    try:
        for kind, n in counts.items():
            for _ in range(n):
                stalled.append((kind, socket.create_connection(('127.0.0.1', server['port']), timeout=10)))
                stalled[-1][1].sendall(stalls[kind])

        def traffic(path: str, data: bytes | None) -> list[tuple[int, float]]:
            out = []
            while time.monotonic() - start < 0.75 * TIMEOUT_S:
                t = time.monotonic()
                out.append((_call(url, path, data, 'image/png' if data else None)[0], time.monotonic() - t))
            return out

        with ThreadPoolExecutor(4) as pool:
            runs = list(pool.map(traffic, ['/health', '/health', '/predict', '/predict'], [None, None, png, png]))
        for path, slo_s, got in (('/health', 0.5, runs[0] + runs[1]), ('/predict', 1.0, runs[2] + runs[3])):
            times = sorted(t for _, t in got)
            assert len(got) >= 4 and {code for code, _ in got} == {200}, (path, got)
            assert times[int(0.95 * (len(times) - 1))] < slo_s, (path, times)
        # every stalled connection is closed by the server: after TIMEOUT_S (a watch runs every TIMEOUT_S)
        for kind, s in stalled:
            s.settimeout(max(start + 2 * TIMEOUT_S + 5 - time.monotonic(), 0.1))
            data = b''
            while chunk := s.recv(65536):  # a socket.timeout here: the server never closed it
                data += chunk
            assert data.startswith(b'HTTP/1.1 408') if kind == 'upload' else data == b'', (kind, data[:80])
        assert time.monotonic() - start < 2 * TIMEOUT_S + 5
    finally:
        for _, s in stalled:
            s.close()
    assert _call(url, '/predict', png, 'image/png')[0] == 200


def test_sigterm_shuts_down_cleanly(server):
    proc = server['proc']
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, server['log'].read_text()[-3000:]
    assert 'timm-snnet serve: stopped' in server['log'].read_text()
    with pytest.raises(OSError):  # nothing listens any more
        socket.create_connection(('127.0.0.1', server['port']), timeout=5).close()
    check_port('127.0.0.1', server['port'])  # and the port can be bound again
