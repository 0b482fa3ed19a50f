"""The training-time stitch sampler on its own (no model): rank-identical draws, anchor share, ROS weights."""
from collections import Counter

import pytest

from timm_snnet._sampling import Sampler, counter_uniform, flops_groups, ros_weights

GFLOPS = [1.0, 4.0, 9.0, 1.5, 2.0, 2.6, 3.2, 5.5, 7.0, 8.2]  # 3 anchors, then 7 stitches


def test_counter_uniform_is_a_pure_function_of_seed_and_step():
    values = [counter_uniform(7, step) for step in range(1000)]
    assert values == [counter_uniform(7, step) for step in range(1000)]
    assert all(0.0 <= v < 1.0 for v in values) and len(set(values)) == 1000
    assert values != [counter_uniform(8, step) for step in range(1000)]
    assert 0.45 < sum(values) / len(values) < 0.55


def test_ranks_draw_the_same_sequence_and_a_saved_step_resumes_it():
    ranks = [Sampler([True] * 10, seed=3) for _ in range(4)]  # one sampler per DDP rank, no communication
    draws = [[s.draw() for _ in range(200)] for s in ranks]
    assert all(d == draws[0] for d in draws) and len(set(draws[0])) == 10
    resumed = Sampler([True] * 10, seed=3)
    resumed.step = 150  # as loaded from a checkpoint's `sample_step`
    assert [resumed.draw() for _ in range(50)] == draws[0][150:]
    assert [Sampler([True] * 10, seed=4).draw() for _ in range(200)] != draws[0]


def test_weights_ineligible_configs_and_errors():
    sampler = Sampler([True, False, True, True])
    assert sampler.weights == [1.0, 0.0, 1.0, 1.0] and not sampler.explicit
    assert 1 not in {sampler.draw() for _ in range(300)}
    sampler.set_weights([0.0, 0.0, 5.0, 0.0])
    assert {sampler.draw() for _ in range(50)} == {2} and sampler.explicit
    sampler.set_weights(None)
    assert sampler.weights is None and sampler.cum == [1.0, 2.0, 3.0, 4.0]
    for bad in ([1.0], [1.0, -1.0, 1.0, 1.0], [0.0] * 4):
        with pytest.raises(ValueError, match='4 non-negative values with a positive sum'):
            sampler.set_weights(bad)
    with pytest.raises(ValueError, match="unknown sampling 'bins'"):
        Sampler([True] * 4, sampling='bins')
    with pytest.raises(ValueError, match='flops_gap must be a positive'):
        Sampler([True] * 4, flops_gap=0)
    with pytest.raises(ValueError, match="sampling='ros' sets the sampling weights"):
        Sampler([True] * 4, sampling='ros', weights=[1.0] * 4)


def test_anchor_share():
    eligible = [True] * 9 + [False]
    sampler = Sampler(eligible, seed=1, anchor_share=0.3, num_anchors=3)
    assert sum(sampler.weights[:3]) == pytest.approx(0.3) and len(set(sampler.weights[:3])) == 1
    assert len(set(sampler.weights[3:9])) == 1 and sampler.weights[9] == 0.0 and not sampler.explicit
    draws = [sampler.draw() for _ in range(4000)]
    assert 0.26 < sum(d < 3 for d in draws) / len(draws) < 0.34 and 9 not in draws
    for bad in (1.5, -0.1, float('nan'), True, '0.3'):
        with pytest.raises(ValueError, match=r'anchor_share .* \[0, 1\]'):
            Sampler(eligible, anchor_share=bad, num_anchors=3)
    with pytest.raises(ValueError, match='needs stitches'):
        Sampler([True] * 3, anchor_share=0.3, num_anchors=3)
    for conflict in (dict(weights=[1.0] * 10), dict(sampling='ros')):
        with pytest.raises(ValueError, match='pass one of anchor_share, sampling_weights'):
            Sampler(eligible, anchor_share=0.3, num_anchors=3, **conflict)


def test_ros_weights_wait_for_the_flops_and_draw_groups_uniformly():
    eligible = [True] * 9 + [False]
    calls = []
    sampler = Sampler(eligible, seed=2, sampling='ros', flops_gap=1.0)
    assert sampler.pending
    with pytest.raises(ValueError, match='GFLOPs'):
        sampler.draw()

    def gflops() -> list[float]:
        calls.append(1)
        return GFLOPS

    draws = [sampler.draw(gflops) for _ in range(6000)]
    assert len(calls) == 1 and not sampler.pending and not sampler.explicit
    assert sampler.weights == ros_weights(GFLOPS, 1.0, eligible) == sampler.ros_weights(GFLOPS)
    groups = flops_groups({k: f for k, f in enumerate(GFLOPS) if eligible[k]}, 1.0)
    group_of = {k: g for g, ks in enumerate(groups) for k in ks}
    counts = Counter(group_of[k] for k in draws)
    assert max(abs(counts[g] / len(draws) - 1 / len(groups)) for g in range(len(groups))) < 0.03
    again = Sampler(eligible, seed=2, sampling='ros', flops_gap=1.0)
    assert [again.draw(lambda: GFLOPS) for _ in range(6000)] == draws  # every rank: same FLOPs, same draws


def test_weights_set_by_hand_win_over_pending_ros():
    sampler = Sampler([True] * 4, sampling='ros')
    sampler.set_weights([0.0, 1.0, 0.0, 0.0])
    assert not sampler.pending and {sampler.draw() for _ in range(20)} == {1}
