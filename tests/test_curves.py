import numpy as np
import pytest

from sketchquant.core.retrieval.curves import precision_recall_curve


def test_pr_curve_hand_computed():
    # one query at the origin direction; gallery ranked: rel, irrel, rel, irrel (by angle)
    q = np.array([[1.0, 0.0]])
    g = np.array([[1.0, 0.0], [0.9, 0.1], [0.7, 0.3], [0.0, 1.0]])
    ql, gl = np.array([0]), np.array([0, 1, 0, 1])
    r, p = precision_recall_curve(q, ql, g, gl, levels=3)
    # ranks: 1 rel (P=1, R=.5), 2 irrel, 3 rel (P=2/3, R=1)
    np.testing.assert_allclose(r, [0.0, 0.5, 1.0])
    np.testing.assert_allclose(p, [1.0, 1.0, 2 / 3])


def test_pr_curve_ties_by_index_and_multilabel():
    q = np.array([[1.0, 0.0]])
    g = np.array([[1.0, 0.0], [1.0, 0.0]])  # exact tie: index 0 first
    r, p = precision_recall_curve(q, np.array([[1, 0]]), g, np.array([[0, 1], [1, 1]]), levels=2)
    np.testing.assert_allclose(p, [0.5, 0.5])
    with pytest.raises(ValueError, match="at least one query"):
        precision_recall_curve(np.zeros((0, 2)), np.zeros(0), g, np.zeros(2))
