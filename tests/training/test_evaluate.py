from __future__ import annotations

import numpy as np
import pytest
from latentsight.training.evaluate import retrieval_scores
from latentsight.training.train import get_lr


def test_perfectly_separated_labels_score_one():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(3, 8)) * 10
    x = np.concatenate([c + rng.normal(size=(20, 8)) * 0.01 for c in centers])
    y = np.repeat(["a", "b", "c"], 20)
    s = retrieval_scores(x, y, k=10)
    assert s.precision_at_k == pytest.approx(1.0) and s.map == pytest.approx(1.0)


def test_random_vectors_score_near_chance():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(400, 16))
    y = np.repeat(list("abcd"), 100)
    s = retrieval_scores(x, y, k=10)
    assert 0.15 < s.precision_at_k < 0.35 and 0.2 < s.map < 0.32


def test_map_matches_hand_computed_case():
    # query 0 (label a): ranking by l2 -> item1 (a), item2 (b), item3 (a)
    x = np.array([[0.0], [1.0], [2.0], [3.0]])
    y = np.array(["a", "a", "b", "a"])
    s = retrieval_scores(x[:4], y, k=1, metric="l2", max_queries=None)
    # per query APs: q0: ranks 1(a) 2(b) 3(a) -> (1 + 2/3)/2; q1: 0(a) and 2(b) tie at 1,
    # stable order keeps 0 first -> 0(a),2(b),3(a) -> (1 + 2/3)/2; q2 (b): no relevant -> 0;
    # q3: 2(b),1(a),0(a) -> (1/2 + 2/3)/2
    expected = ((1 + 2 / 3) / 2 * 2 + 0 + (1 / 2 + 2 / 3) / 2) / 4
    assert s.map == pytest.approx(expected)


def test_lr_schedule_warms_up_then_decays():
    lrs = [get_lr(s, 100, peak=1.0, warmup=10) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:], strict=False))
    assert lrs[-1] == pytest.approx(0.05, abs=0.01)


def test_macro_differs_from_micro_when_a_rare_label_is_missed():
    # 18 "common" items in a tight cluster, 2 "rare" items far apart from each other, each
    # nearer to the common cluster than to its twin: micro is dominated by the common label.
    common = np.zeros((18, 2)) + np.random.default_rng(0).normal(size=(18, 2)) * 0.01
    rare = np.array([[1.0, 0.0], [-1.0, 0.0]])
    x = np.concatenate([common, rare])
    y = np.array(["common"] * 18 + ["rare"] * 2)
    s = retrieval_scores(x, y, k=1, metric="l2", max_queries=None)
    # common queries: nearest is common (1.0); rare queries: nearest is common (0.0)
    assert s.per_label["common"]["precision_at_k"] == pytest.approx(1.0)
    assert s.per_label["rare"]["precision_at_k"] == pytest.approx(0.0)
    assert s.precision_at_k == pytest.approx(18 / 20)
    assert s.macro_precision_at_k == pytest.approx(0.5)
    assert s.macro_map < s.map
    assert s.per_label["rare"]["n"] == 2
    d = s.as_dict()
    assert {"precision_at_k", "macro_precision_at_k", "map", "macro_map", "per_label"} <= set(d)


def test_query_scores_against_a_gallery():
    from latentsight.training.evaluate import query_scores

    g = np.array([[0.0, 1.0], [1.0, 0.0], [0.9, 0.1]])
    s = query_scores(np.array([[1.0, 0.05]]), ["x"], g, ["y", "x", "x"], k=2)
    assert s.precision_at_k == pytest.approx(1.0) and s.map == pytest.approx(1.0)
