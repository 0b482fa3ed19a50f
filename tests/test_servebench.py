"""`timm-snnet serve-bench` (issue #29): traces, arrival generators, deadlines, the controller on a full-size latency
table (simulated clock), bad input, and one short real run on the Fashion-MNIST SN-Net over Ray Serve."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from timm_snnet._serve import RequestError, StitchController, parse_budget
from timm_snnet._servebench import (
    Arrival,
    best_fixed,
    bursty,
    parse_arms,
    parse_load,
    peak_rate,
    poisson,
    production_trace,
    ramp,
    read_trace,
    simulate,
    summarize,
    transform,
    write_trace,
)

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / 'examples' / 'fashion_mnist' / 'model'
# snnet_deit_tsb (random weights) profiled on this CPU, 1 thread, with the authors' top-1 per stitch
FULL = json.loads((ROOT / 'tests' / 'data' / 'snnet_deit_tsb_latency_t1.json').read_text())['rows']
TOP1 = {r['id']: r['top1'] for r in FULL}
GFLOPS = {r['id']: r['gflops'] for r in FULL}


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t


# --- traces --------------------------------------------------------------------------------------------------------
def test_read_trace_good_files(tmp_path):
    proteus = tmp_path / 'proteus.csv'
    proteus.write_text('t_ms,qos,deadline_ms\n0,0,300\n12.5,1,\n7,0,150\n')
    assert read_trace(proteus) == [Arrival(0.0, 300.0), Arrival(7.0, 150.0), Arrival(12.5, None)]  # sorted
    bare = tmp_path / 'bare.csv'
    bare.write_text('# arrival times only\n0\n\n250.5,anything,else\n1000\n')
    assert [a.t_ms for a in read_trace(bare)] == [0.0, 250.5, 1000.0]
    assert all(a.deadline_ms is None for a in read_trace(bare))
    out = tmp_path / 'written.csv'
    write_trace(out, read_trace(proteus))
    assert out.read_text().splitlines()[0] == 't_ms,qos,deadline_ms' and read_trace(out) == read_trace(proteus)


@pytest.mark.parametrize('text, match', [
    ('t_ms,qos\n', 'no arrivals'), ('', 'no arrivals'), ('0\nabc\n', ':2: expected numbers'),
    ('-5\n', '>= 0'), ('t_ms,qos,deadline_ms\n0,0,0\n', 'deadlines > 0'), ('t_ms,deadline\n1,x\n', 'numbers'),
    ('nan\n', '>= 0')])
def test_read_trace_bad_files(tmp_path, text, match):
    path = tmp_path / 'bad.csv'
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        read_trace(path)
    with pytest.raises(ValueError, match='cannot read trace'):
        read_trace(tmp_path / 'missing.csv')


# --- arrivals ------------------------------------------------------------------------------------------------------
def test_generators_are_seeded_with_exact_counts():
    assert len(poisson(10, 30, seed=0)) == 292 and len(poisson(10, 30, seed=1)) == 304
    assert poisson(10, 30, seed=0) == parse_load('poisson:10', 30, seed=0)
    phases = ramp([5, 20, 5], 10, seed=0)
    assert [sum(lo * 1e4 <= a.t_ms < (lo + 1) * 1e4 for a in phases) for lo in range(3)] == [42, 192, 56]
    assert phases == parse_load('ramp:5,20,5@10', seed=0)
    assert len(bursty(2, 30, 60, seed=0)) == 509 and bursty(2, 30, 60, seed=0) == parse_load('bursty:2,30', 60)
    assert bursty(2, 30, 60, 4, 1, seed=5) == parse_load('bursty:2,30,4,1', 60, seed=5)
    trace = production_trace(120, seed=0)
    assert len(trace) == 1100 and trace == production_trace(120, seed=0) != production_trace(120, seed=1)
    assert all(0 <= a.t_ms < 120e3 for a in trace) and peak_rate(trace) > 3 * len(trace) / 120  # bursty
    for spec in ('poisson:x', 'ramp:1,2', 'bursty:1', 'bursty:1,2,0,1', 'sine:3', 'ramp:1,-2@5'):
        with pytest.raises(ValueError, match='--load'):
            parse_load(spec)


def test_transform_keeps_shape_and_counts():
    a = poisson(10, 30, seed=0)
    assert len(transform(a, rate_scale=2)) == 584 and len(transform(a, rate_scale=0.5)) == 141
    assert len(transform(a, rate_scale=2.5, seed=3)) == 733
    win = transform(a, window=(10, 20))
    assert len(win) == 103 and 0 <= win[0].t_ms and win[-1].t_ms < 10e3
    fast = transform(a, time_scale=2, duration_s=10)
    assert len(fast) == 190 and fast[0].t_ms == a[0].t_ms / 2
    assert peak_rate([Arrival(t) for t in (0, 100, 200, 5000)], 1.0) == 3.0
    with pytest.raises(ValueError, match='no arrivals left'):
        transform(a, window=(100, 200))
    with pytest.raises(ValueError, match='must be > 0'):
        transform(a, rate_scale=0)


# --- deadlines -----------------------------------------------------------------------------------------------------
def test_deadline_fields_and_selection():
    assert parse_budget({'deadline_ms': '150'}, 71) == {'deadline_ms': 150.0}
    for fields, match in (({'deadline_ms': 0}, 'positive'), ({'deadline_ms': 100, 'stitch_id': 1}, 'either'),
                          ({'deadline_ms': 100, 'min_top1': 80}, 'either'), ({'deadline': 1}, 'unknown field')):
        with pytest.raises(RequestError, match=match):
            parse_budget(fields, 71)
    clock = FakeClock()
    c = StitchController(FULL, slo_ms=300, max_batch_size=8, clock=clock)
    idle = c.current
    assert TOP1[idle] > 80 and c.predict_ms(idle, 1) <= 240  # the most accurate stitch that fits 300 ms less 20%
    # a 100 ms deadline: the most accurate stitch predicted to meet it, for this batch only
    k = c.choose(1, deadline_ms=100)
    assert c.predict_ms(k, 1) <= 100 and TOP1[k] == max(TOP1[r['id']] for r in FULL if c.predict_ms(r['id'], 1) <= 100)
    assert c.current == idle and c.switches == 0
    assert c.choose(1, deadline_ms=5) == c.fastest == 0  # nothing meets it: the fastest, not an error
    # a queued request's deadline counts too: this batch plus the queue behind it must make it
    assert c.predict_ms(c.choose(1, backlog=4, queued_deadline_ms=150), 1) + c.drain_ms(4) <= 150
    c.record(120, deadline_ms=100)
    c.record(90, deadline_ms=100)
    assert c.metrics()['slo_attainment'] == 0.5


# --- the controller at full size, on a simulated clock --------------------------------------------------------------
def test_controller_full_size_follows_rate():
    clock = FakeClock()
    c = StitchController(FULL, slo_ms=300, max_batch_size=8, hold_s=1.0, clock=clock)
    idle = c.choose(1)
    for _ in range(30):  # 30 req/s over the last second
        clock.t += 1 / 30
        c.arrive()
    busy = c.choose(2)
    assert c.predict_ms(busy, 1) < 45 and TOP1[busy] < TOP1[idle] and c.metrics()['arrival_rate'] == 30
    clock.t += 5  # quiet again: back up after hold_s
    assert c.choose(1) == idle


def test_adaptive_beats_every_fixed_arm_in_simulation():
    trace = transform(production_trace(600, seed=0, deadline_ms=300), window=(0, 90))
    peak = peak_rate(trace)
    best = best_fixed(FULL, peak, 300, max_batch_size=8)
    assert 0 < TOP1[best] < TOP1[1]  # the peak is beyond S
    arms = {name: summarize(name, simulate(trace, FULL, max_batch_size=8, overhead_ms=8, noise=0.05, **kw), 300,
                            TOP1, GFLOPS, 90)
            for name, kw in (('Ti', dict(stitch_id=0)), ('B', dict(stitch_id=2)), ('best', dict(stitch_id=best)),
                             ('adaptive', dict(slo_ms=300)))}
    assert arms['adaptive']['slo_attainment'] >= 0.99 and arms['B']['slo_attainment'] < 0.5
    assert arms['adaptive']['mean_top1'] >= arms['best']['mean_top1'] + 1.0
    assert arms['adaptive']['switches'] > 5 and arms['Ti']['switches'] == 0
    assert len(arms['Ti']['series']['t']) == 45 and max(arms['Ti']['series']['rps']) >= peak / 2


def test_best_fixed_and_arms():
    assert best_fixed(FULL, 1.0, 300) != best_fixed(FULL, 25.0, 300)
    assert best_fixed(FULL, 1000.0, 300) == 0  # nothing holds: the fastest
    assert best_fixed(FULL, 25.0, 300, replicas=2) != best_fixed(FULL, 25.0, 300)
    assert parse_arms('fixed:0, adaptive,best-fixed,fixed:0', 71) == ['fixed:0', 'adaptive', 'best-fixed']
    for spec, match in (('fixed:71', 'out of range|0..70'), ('fixed:x', '0..70'), ('greedy', 'unknown arm')):
        with pytest.raises(ValueError, match=match):
            parse_arms(spec, 71)


# --- the command ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize('args, match', [
    (['--trace', 'missing.csv'], 'cannot read trace'),
    (['--load', 'poisson:5', '--duration', '2', '--window', '10:20'], 'no arrivals left'),
    (['--load', 'poisson:5', '--arms', 'fixed:0,greedy', '--simulate'], 'unknown arm'),
    (['--load', 'poisson:5', '--arms', 'fixed:99', '--simulate'], '0..70'),
    (['--load', 'wave:3'], '--load'),
    ([], 'one of --trace'),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, args, match):
    from timm_snnet.cli import main

    with pytest.raises(SystemExit) as e:
        main(['serve-bench', f'local-dir:{MODEL}', '--output', str(tmp_path), *args])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith('timm-snnet serve-bench: ') and '\n' not in err and __import__('re').search(match, err)


@pytest.mark.slow  # Ray start-up and two deployments: about 30-50 s
def test_serve_bench_real_run(tmp_path):
    """A real run on Ray Serve: two arms, 2 s of Poisson load, the tiny model."""
    out = tmp_path / 'bench'
    cmd = [sys.executable, '-m', 'timm_snnet.cli', 'serve-bench', f'local-dir:{MODEL}', '--load', 'poisson:15',
           '--duration', '2', '--arms', 'fixed:0,adaptive', '--slo-ms', '200', '--stitches', '0-2',
           '--output', str(out)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, 'HF_HUB_OFFLINE': '1'})
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads((out / 'serve.json').read_text())
    assert set(doc) >= {'model', 'slo_ms', 'load', 'arms'} and doc['slo_ms'] == 200
    assert [a['name'] for a in doc['arms']] == ['fixed Ti', 'adaptive']
    for arm in doc['arms']:
        assert set(arm) >= {'name', 'requests', 'answered', 'errors', 'slo_attainment', 'mean_top1', 'p50_ms',
                            'p95_ms', 'p99_ms', 'throughput_rps', 'switches'}
        assert arm['requests'] == doc['load']['requests'] > 12 and arm['errors'] == 0 and arm['mean_top1'] > 50
    assert (out / 'serve.png').stat().st_size > 10_000 and '| adaptive |' in (out / 'serve.md').read_text()
    rows = json.loads((out / 'latency.json').read_text())
    assert sorted(r['id'] for r in rows) == [0, 1, 2] and all(r['latency_ms_b8'] > 0 for r in rows)
