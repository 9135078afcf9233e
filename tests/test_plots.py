"""The plot's story panel: its title says the whole policy and fits the panel."""
import pytest

from autofreeze_ext.plots import _story_title

matplotlib = pytest.importorskip("matplotlib")
matplotlib.use("Agg")


@pytest.mark.parametrize("froze", [True, False])
def test_the_story_title_fits_its_panel(froze):
    import matplotlib.pyplot as plt

    policy = "PlateauFreeze(no gain in 2 checks, 2/epoch, patience 1, warm-up 238, learned<=0.75, top 1 train)"
    history = [{"event": "freeze", "step": 5}] if froze else []
    fig, axes = plt.subplots(1, 4, figsize=(21, 4.2))  # plot_reports' layout with a story panel
    _story_title(axes[3], {"policy": policy, "mode": "autofreeze", "controller_history": history})
    fig.tight_layout()
    fig.canvas.draw()
    title = axes[3].title
    text = title.get_text()
    assert text.startswith("why it froze" if froze else "why nothing froze")
    assert text.replace("\n", " ").endswith(policy)  # the whole description (it was cut at 70 characters)
    r = fig.canvas.get_renderer()
    assert title.get_window_extent(r).width <= axes[3].get_window_extent(r).width * 1.05
    plt.close(fig)


def test_a_longer_description_is_shortened_to_two_lines_that_fit():
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 4, figsize=(21, 4.2))
    _story_title(axes[3], {"policy": "Policy(" + ", ".join(f"option {i}" for i in range(40)) + ")", "mode": "m",
                           "controller_history": []})
    fig.tight_layout()
    fig.canvas.draw()
    r = fig.canvas.get_renderer()
    title = axes[3].title
    assert title.get_text().count("\n") == 1 and title.get_text().endswith("[...]")
    assert title.get_window_extent(r).width <= axes[3].get_window_extent(r).width * 1.05
    plt.close(fig)


def test_every_registered_policys_title_has_at_most_two_lines_that_fit():
    """Each policy's own description (default options, the run facts a CLI run gives it)."""
    import matplotlib.pyplot as plt

    from autofreeze_ext.policies import POLICIES, PolicyOptions, make_policy

    for name in POLICIES:
        policy = make_policy(name, num_blocks=6, options=PolicyOptions(total_steps=2380, target_speedup=2.0,
                                                                       warmup_steps=238, stop_when_converged=True))
        fig, axes = plt.subplots(1, 4, figsize=(21, 4.2))
        _story_title(axes[3], {"policy": policy.describe(), "mode": "m", "controller_history": [{"event": "freeze", "step": 1}]})
        fig.tight_layout()
        fig.canvas.draw()
        r, title = fig.canvas.get_renderer(), axes[3].title
        assert title.get_text().count("\n") <= 1, (name, title.get_text())
        assert "warm-\n" not in title.get_text(), name
        assert title.get_window_extent(r).width <= axes[3].get_window_extent(r).width * 1.05, name
        plt.close(fig)


def test_the_frozen_depth_axis_counts_whole_blocks_from_zero_to_all(tmp_path, monkeypatch):
    """A run that froze nothing: the axis still spans 0..num_blocks in whole blocks (it showed
    -0.04..0.04 around a flat line)."""
    import autofreeze_ext.plots as plots

    seen = {}
    monkeypatch.setattr(plots, "save_figure", lambda fig, axes, path, **kw: seen.update(axes=axes) or path)
    report = {"mode": "full", "num_blocks": 6, "evals": [{"train_time_s": 1.0, "score": 0.5, "accuracy": 0.5}],
              "frozen_depth": [{"step": 0, "depth": 0}, {"step": 10, "depth": 0}], "controller_history": [],
              "metric": "accuracy", "phases_s": {"backward": 1.0}}
    plots.plot_reports([report], str(tmp_path / "p.png"))
    ax = seen["axes"][1]
    ax.figure.canvas.draw()
    lo, hi = ax.get_ylim()
    ticks = [t for t in ax.get_yticks() if lo <= t <= hi]
    assert lo < 0 < 6 < hi and all(float(t).is_integer() for t in ticks) and max(ticks) == 6


def test_the_slice_story_shows_the_checks_after_the_freeze_and_the_stop():
    """--stop-when-converged: the checks after the freeze (untested by the freeze rule: no eta)
    decide the stop; the panel shows them and the stop, not only the checks up to the freeze."""
    import matplotlib.pyplot as plt

    from autofreeze_ext.plots import _story

    def check(step, score, eta=None):
        h = {"event": "interval", "step": step, "signals": {"val_slice": {"score": score, "loss": 1 - score}},
             "signal": "val_slice"}
        return {**h, "eta": eta} if eta is not None else h

    history = [check(6, 0.5, {"0": 0.0}), check(12, 0.5, {"0": 1.0}), check(18, 0.5, {"0": 2.0}),
               {"event": "freeze", "step": 18}, check(24, 0.6), check(30, 0.6), check(36, 0.6)]
    report = {"policy": "PlateauFreeze(...)", "mode": "autofreeze", "controller_history": history,
              "stopped": "converged", "steps": 36}
    fig, ax = plt.subplots()
    _story(ax, report)
    xs = sorted(float(x) for c in ax.collections for x, _ in c.get_offsets())
    assert xs == [6, 12, 18, 24, 30, 36]  # every check, the three after the freeze included
    labels = [h.get_label() for h in ax.get_legend_handles_labels()[0]]
    assert "after the freeze" in labels and "stopped: converged" in labels
    plt.close(fig)
