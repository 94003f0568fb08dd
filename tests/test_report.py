"""The one results-table printer: rows are feature sets, columns retrieval metrics; losses stay out."""

from __future__ import annotations

from sketchquant.core.report import print_results, results_table


def test_results_table_keeps_losses_out_of_the_feature_rows():
    metrics = {
        "test/map_all": 0.5,
        "test/p_100": 0.25,
        "test/map_all_micro": 0.4,
        "test/num_queries": 21.0,
        "test/loss": 3.2,
        "test/cls": 1.1,
        "test/quant": 0.7,
        "test/acc": 0.9,
        "test/proto/map_all": 0.55,
        "test/codes/map_1000": 0.61,
        "test/float/quant": 0.2,
        "test/chance_map_all": 0.0667,
    }
    columns, body = results_table(metrics, unnamed="raw")
    assert columns == ["map_1000", "map_all", "p_100"]
    assert body == [
        ("raw", ["", "0.5000", "0.2500"]),
        ("proto", ["", "0.5500", ""]),
        ("codes", ["0.6100", "", ""]),
    ]


def test_print_results_adds_a_chance_row(capsys):
    print_results("t", {"test/map_all": 0.5, "test/chance_map_all": 0.0667, "test/loss": 2.0})
    out = capsys.readouterr().out
    assert "chance" in out and "0.0667" in out and "loss" not in out and "2.0000" not in out


def test_hashing_chance_is_the_share_of_relevant_database_items():
    import torch

    from sketchquant.core.retrieval.protocols import hashing_chance

    q = torch.tensor([[1, 0, 0], [0, 1, 1]])
    g = torch.tensor([[1, 0, 0], [0, 0, 1], [0, 1, 0], [1, 1, 0]])
    # query 0 shares a label with items 0 and 3 (2/4); query 1 with items 1, 2, 3 (3/4)
    assert hashing_chance(q, g, (1000, "all"), "test") == {
        "test/chance_map_1000": 0.625,
        "test/chance_map_all": 0.625,
    }
