"""The README's accuracy and cost figures are the committed reports' figures (training/readme_figures.py)."""

from __future__ import annotations

import copy
import json

import pytest

from training import readme_figures


def test_readme_figures_match_the_committed_reports():
    text = readme_figures.README.read_text()
    assert readme_figures.rewrite(text, readme_figures.render()) == text, (
        "README.md's generated figures differ from reports/: run python -m training.readme_figures"
    )


def test_a_changed_report_changes_the_readme():
    metrics = json.loads((readme_figures.REPORTS / "metrics.json").read_text())
    leave_out = json.loads((readme_figures.REPORTS / "leave_out.json").read_text())
    before = readme_figures.accuracy_table(metrics, leave_out)
    worse = copy.deepcopy(leave_out)
    worse["mean"]["clean"]["auc"] = 0.5
    after = readme_figures.accuracy_table(metrics, worse)
    assert "**0.500**" in after and "**0.500**" not in before


def test_a_laundering_drop_over_the_target_is_flagged():
    metrics = json.loads((readme_figures.REPORTS / "metrics.json").read_text())
    clean = metrics["variants"]["clean"]["overall"]["auc"]
    for route, drop, flagged in [("social", 0.02, False), ("social", 0.05, True)]:
        changed = copy.deepcopy(metrics)
        changed["variants"][route]["overall"]["auc"] = clean - drop
        line = next(x for x in readme_figures.in_distribution(changed).splitlines() if f"`{route}`" in x)
        assert ("over the 0.03 target" in line) is flagged, line


def test_a_block_the_readme_lacks_is_an_error():
    text = "intro\n<!-- figures:policy -->\nold\n<!-- /figures:policy -->\n"
    assert (
        readme_figures.rewrite(text, {"policy": "new\n"})
        == "intro\n<!-- figures:policy -->\nnew\n<!-- /figures:policy -->\n"
    )
    with pytest.raises(ValueError, match="differ"):
        readme_figures.rewrite(text, {"policy": "new\n", "accuracy-table": "t\n"})


def test_the_readme_says_when_no_pixel_verdict_can_be_confident():
    metrics = json.loads((readme_figures.REPORTS / "metrics.json").read_text())
    low, high = metrics["evaluated"]["uncertain_range"]
    inside = readme_figures.policy(metrics, {}, (low + 0.001, high - 0.001))
    beyond = readme_figures.policy(metrics, {}, (low / 2, (high + 1) / 2))
    assert "No pixel verdict is ever confident" in inside and "No pixel verdict" not in beyond
    # The shipped artifact's reach is computed from the model itself: a logistic fusion on one calibrated feature.
    reach = readme_figures.reachable_range(readme_figures.WEIGHTS / metrics["evaluated"]["model"])
    assert 0.0 < reach[0] < metrics["evaluated"]["threshold"] < reach[1] < 1.0
