"""The lab analysis's plots (plots/*.png): matplotlib's object API on Agg, no global pyplot state.

    paths = draw_plots(run, metrics, rm_plot, rl_log)   # called by analysis.analyze; paths as "plots/<name>.png"
"""
from __future__ import annotations

import random
from collections import defaultdict
from pathlib import Path

from smlearn.lab.analysis import ALL, LEVEL_NAMES
from smlearn.lab.stats import moving_average, roc_curve
from smlearn.rundir import MODEL_LABELS


def draw_plots(run, metrics: dict, rm_plot: dict, log: list[dict]) -> list[str]:
    """Every plot the metrics (and the RL log) support; returns their paths relative to the run."""
    out, tasks = run.path("plots"), metrics["tasks"]
    paths = [_plot_accuracy(metrics, tasks, out)]
    if metrics["validity"]:
        paths.append(_plot_validity(metrics, tasks, out))
    paths.append(_plot_rm_levels(rm_plot["level_scores"] or _levels_from_scored(rm_plot["scored"]), out))
    paths.append(_plot_rm_validity(rm_plot["scored"], metrics["rm"]["vs_validity"], out))
    if log:
        paths.append(_plot_rl(log, out))
    return paths


def _levels_from_scored(scored: list[dict]) -> dict[str, list[float]]:
    out: dict[str, list[float]] = defaultdict(list)
    for it in scored:
        out[str(it["level"])].append(it["score"])
    return dict(out)


def _figure(nrows: int = 1, ncols: int = 1, size: tuple[float, float] = (8, 4.5)):
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=110, layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, axes


def _grouped_bars(ax, groups: list[str], series: dict[str, list[float | None]], ylabel: str, title: str,
                  ylim: tuple[float, float] | None = (0, 1.2)) -> None:
    n = max(len(series), 1)
    width = 0.8 / n
    for i, (label, values) in enumerate(series.items()):
        xs = [g + (i - (n - 1) / 2) * width for g in range(len(groups))]
        ys = [v if v is not None else 0.0 for v in values]
        bars = ax.bar(xs, ys, width=width, label=label)
        for bar, v in zip(bars, values):
            ax.annotate("n/a" if v is None else f"{v:.2f}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center", va="bottom", fontsize=7, xytext=(0, 1), textcoords="offset points")
    ax.set_xticks(range(len(groups)), groups)
    ax.set_xlabel("task")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if ylim:
        ax.set_ylim(*ylim)
        ax.set_yticks([i / 5 for i in range(6)])
    ax.grid(axis="y", alpha=0.3)
    if series:
        # One row above the bars (ylim leaves room over 1.0), so a full bar is never hidden.
        ax.legend(fontsize=8, ncols=len(series), loc="upper center")


def _save(fig, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return f"plots/{path.name}"


def _plot_accuracy(metrics: dict, tasks: list[str], out: Path) -> str:
    groups = tasks + [ALL]
    fig, axes = _figure()
    series = {f"{MODEL_LABELS.get(s, s)}": [metrics["accuracy"][s][g]["accuracy"] for g in groups]
              for s in metrics["stages"]}
    _grouped_bars(axes[0][0], groups, series, "test accuracy", "Test accuracy by task and stage")
    return _save(fig, out / "accuracy_by_task.png")


def _plot_validity(metrics: dict, tasks: list[str], out: Path) -> str:
    groups = tasks + [ALL]
    fig, axes = _figure(1, 2, size=(12, 4.5))
    models = [s for s in metrics["stages"] if s in metrics["validity"]]
    _grouped_bars(axes[0][0], groups,
                  {MODEL_LABELS.get(s, s): [metrics["validity"][s][g]["valid_rate"] for g in groups] for s in models},
                  "fraction of test completions", "Verifier-valid rationales (all steps valid, answer follows)")
    _grouped_bars(axes[0][1], groups,
                  {MODEL_LABELS.get(s, s): [metrics["validity"][s][g]["right_wrong_reason_rate"] for g in groups]
                   for s in models},
                  "fraction of correct answers", "Right for the wrong reason (correct, invalid rationale)")
    return _save(fig, out / "validity_by_task.png")


def _plot_rm_levels(level_scores: dict[str, list[float]], out: Path) -> str:
    fig, axes = _figure()
    ax = axes[0][0]
    keys = [k for k in ("2", "1", "0") if level_scores.get(k)] + \
        [k for k in level_scores if k not in ("2", "1", "0") and level_scores[k]]
    if keys:
        data = [level_scores[k] for k in keys]
        box = ax.boxplot(data, tick_labels=[f"{LEVEL_NAMES.get(k, k)} (n={len(level_scores[k])})" for k in keys],
                         showmeans=True)
        box["medians"][0].set_label("median (box: quartiles)")
        box["means"][0].set_label("mean")
        for i, vs in enumerate(data, start=1):
            jitter = random.Random(i)
            ax.scatter([i + jitter.uniform(-0.12, 0.12) for _ in vs], vs, s=6, alpha=0.3, color="gray",
                       label="completion" if i == 1 else None)
        ax.legend(fontsize=8)
    else:
        ax.text(0.5, 0.5, "no RM scores per level", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("quality level of the completion (collection)")
    ax.set_ylabel("reward-model score")
    ax.set_title("RM score by quality level (completions of the preference pairs)")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, out / "rm_scores_by_level.png")


def _plot_rm_validity(scored: list[dict], vs: dict | None, out: Path) -> str:
    fig, axes = _figure(1, 2, size=(12, 4.5))
    ax, ax_roc = axes[0][0], axes[0][1]
    if scored:
        valid = [it["score"] for it in scored if it["valid"]]
        invalid = [it["score"] for it in scored if not it["valid"]]
        all_scores = valid + invalid
        lo, hi = min(all_scores), max(all_scores)
        bins = [lo + (hi - lo) * i / 20 for i in range(21)] if hi > lo else 10
        ax.hist(invalid, bins=bins, alpha=0.6, label=f"invalid (n={len(invalid)})", color="tab:red")
        ax.hist(valid, bins=bins, alpha=0.6, label=f"verifier-valid (n={len(valid)})", color="tab:green")
        ax.legend(fontsize=8)
        fpr, tpr = roc_curve([it["score"] for it in scored], [it["valid"] for it in scored])
        auc = vs.get("auc") if vs else None
        ax_roc.plot(fpr, tpr, label=f"RM score (AUC {'n/a' if auc is None else f'{auc:.3f}'})")
        ax_roc.legend(fontsize=8, loc="lower right")
    else:
        ax.text(0.5, 0.5, "no scored rationales", ha="center", va="center", transform=ax.transAxes)
    ax_roc.plot([0, 1], [0, 1], "--", color="gray", linewidth=1)
    ax.set_xlabel("reward-model score")
    ax.set_ylabel("judged training rationales")
    ax.set_title("RM score of verifier-valid vs invalid rationales")
    ax_roc.set_xlabel("false positive rate (invalid scored above threshold)")
    ax_roc.set_ylabel("true positive rate (valid scored above threshold)")
    ax_roc.set_title("ROC: RM score as a detector of valid rationales")
    ax_roc.set_xlim(0, 1)
    ax_roc.set_ylim(0, 1.02)
    return _save(fig, out / "rm_score_vs_validity.png")


def _plot_rl(log: list[dict], out: Path) -> str:
    """RL curves, each with a moving average over ~1/10 of the steps (a single step's rollout batch is
    noisy), and the greedy accuracy on held-out RL questions where it was logged (step 0: the SFT model)."""
    fig, axes = _figure(2, 3, size=(15, 7.5))
    panels = [("reward_mean", "mean reward", "Reward"),
              ("correct_mean", "fraction correct", "Rollout accuracy (T = 1)"),
              ("rm_score_mean", "standardised RM score", "RM score of rollouts"),
              ("kl_mean", "mean KL to reference", "KL"), ("response_length_mean", "tokens", "Response length")]
    window = max(1, len(log) // 10)
    flat = [a for row in axes for a in row]
    for ax, (key, ylabel, title) in zip(flat, panels):
        pts = [(r.get("step", i), r[key]) for i, r in enumerate(log) if r.get(key) is not None]
        if pts:
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            ax.plot(xs, ys, alpha=0.35, label=key)
            ax.plot(xs, moving_average(ys, window), label=f"moving average ({window} steps)")
            ax.legend(fontsize=8)
        else:
            ax.text(0.5, 0.5, f"no {key} logged", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("RL step")
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    ax = flat[5]
    pts = [(0, r["initial_eval_accuracy"]) for r in log if r.get("initial_eval_accuracy") is not None][:1]
    pts += [(r.get("step", i), r["eval_accuracy"]) for i, r in enumerate(log) if r.get("eval_accuracy") is not None]
    if pts:
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o")
    else:
        ax.text(0.5, 0.5, "not logged (rl.eval_every = 0)", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("RL step")
    ax.set_ylabel("greedy accuracy")
    ax.set_title("Held-out RL questions (greedy)")
    ax.grid(alpha=0.3)
    fig.suptitle("RL training curves (rl/log.jsonl)")
    return _save(fig, out / "rl_curves.png")

