"""Figures of the report: plotly figures built from DataFrames (and, for the study, Optuna's own).

Each function takes data and returns a figure; nothing here reads files or writes.

Usage:
    fig = curves_figure(histories)   # columns: config, seed, epoch, train_loss, val_loss, ...
"""

from __future__ import annotations

import numpy as np
import optuna
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

COLORS = {"baseline": "#7f7f7f", "tuned": "#1f77b4"}


def curves_figure(histories: pd.DataFrame) -> go.Figure:
    """Train and validation loss and accuracy per epoch, mean over seeds, both configs overlaid."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("loss", "accuracy"))
    mean = histories.groupby(["config", "epoch"], as_index=False).mean(numeric_only=True)
    for config, part in mean.groupby("config"):
        for col, metric in ((1, "loss"), (2, "acc")):
            for split, dash in (("train", "solid"), ("val", "dash")):
                fig.add_trace(go.Scatter(
                    x=part["epoch"], y=part[f"{split}_{metric}"], mode="lines+markers",
                    name=f"{config} {split}_{metric}", line={"color": COLORS.get(config), "dash": dash},
                    legendgroup=config), row=1, col=col)
    fig.update_xaxes(title_text="epoch")
    fig.update_layout(title="Learning curves (mean over seeds; train loss includes label smoothing)",
                      height=420)
    return fig


def per_class_figure(per_class: pd.DataFrame) -> go.Figure:
    """Grouped bars: columns config, class, mean, std (test accuracy per class)."""
    fig = go.Figure()
    for config, part in per_class.groupby("config", sort=False):
        fig.add_trace(go.Bar(x=part["class"], y=part["mean"], name=config,
                             error_y={"type": "data", "array": part["std"]},
                             marker_color=COLORS.get(config)))
    fig.update_layout(title="Test accuracy per class (mean ± std over seeds)", barmode="group",
                      yaxis={"title": "test_acc", "range": [0, 1]}, height=420)
    return fig


def confusion_figure(confusion: np.ndarray, classes: list[str], title: str) -> go.Figure:
    share = confusion / np.maximum(confusion.sum(1, keepdims=True), 1)
    fig = go.Figure(go.Heatmap(z=share, x=classes, y=classes, colorscale="Blues", zmin=0, zmax=1,
                               text=confusion.astype(int), texttemplate="%{text}",
                               colorbar={"title": "share"}))
    fig.update_layout(title=title, xaxis={"title": "predicted"},
                      yaxis={"title": "true", "autorange": "reversed"}, height=480, width=560)
    return fig


def image_grid_figure(images: np.ndarray, captions: list[str], title: str, cols: int = 8) -> go.Figure:
    """A grid of uint8 (N, 3, 32, 32) images with a caption each."""
    n = max(1, len(images))
    rows = -(-n // cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=captions or [""],
                        horizontal_spacing=0.01, vertical_spacing=0.12 / max(1, rows - 1) if rows > 1 else 0)
    for i, img in enumerate(images):
        fig.add_trace(go.Image(z=img.transpose(1, 2, 0)), row=i // cols + 1, col=i % cols + 1)
    fig.update_xaxes(visible=False)
    fig.update_yaxes(visible=False)
    fig.update_annotations(font_size=9)
    fig.update_layout(title=title, height=150 * rows + 80, margin={"t": 90})
    return fig


def study_figures(study: optuna.Study) -> dict[str, go.Figure]:
    """Optuna's own views of the study (they take the study and return plotly figures)."""
    vis = optuna.visualization
    figures = {
        "history": vis.plot_optimization_history(study),
        "intermediate": vis.plot_intermediate_values(study),
        "parallel": vis.plot_parallel_coordinate(study),
        "slice": vis.plot_slice(study),
    }
    complete = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"]
    if len(complete) >= 2 and len({tuple(sorted(t.params.items())) for t in complete}) >= 2:
        figures["importances"] = vis.plot_param_importances(study)
    figures["intermediate"].update_layout(title="Intermediate val_acc per epoch (pruned trials stop early)")
    return figures


def rung_scatter_figure(curves: dict[int, dict[int, float]], target: int) -> go.Figure:
    """Each completed trial's validation accuracy at each earlier epoch against the target's."""
    fig = go.Figure()
    epochs = sorted({e for c in curves.values() for e in c if e != target})
    for e in epochs:
        keys = [k for k, c in curves.items() if e in c and target in c]
        fig.add_trace(go.Scatter(x=[curves[k][e] for k in keys], y=[curves[k][target] for k in keys],
                                 mode="markers", name=f"epoch {e}", text=[f"trial {k}" for k in keys]))
    fig.update_layout(title=f"Completed trials: val_acc at each epoch against the target ({target} epochs)",
                      xaxis_title="val_acc at the epoch", yaxis_title=f"val_acc at epoch {target}")
    return fig


def expected_max_figure(curve: list[tuple[int, float]]) -> go.Figure:
    """The expected best validation accuracy against the number of trials (reports.stats.expected_max)."""
    fig = go.Figure(go.Scatter(x=[n for n, _ in curve], y=[100 * v for _, v in curve], mode="lines+markers",
                               name="expected best val_acc"))
    fig.update_layout(title="Expected best val_acc of n trials (Tang et al. 2020's unbiased estimator over the "
                            "completed trials)", xaxis_title="trials", yaxis_title="val_acc (%)", height=400)
    return fig


def differences_figure(differences: list[float], noise: float) -> go.Figure:
    """Per-seed test-accuracy differences (winner - baseline, points), with the one-run noise band."""
    seeds = list(range(len(differences)))
    fig = go.Figure(go.Bar(x=seeds, y=[100 * d for d in differences], name="tuned - baseline"))
    fig.add_hrect(y0=-100 * noise, y1=100 * noise, fillcolor="gray", opacity=0.2, line_width=0,
                  annotation_text="± one run's noise (baseline std)")
    fig.update_layout(title="Test accuracy difference per seed (same seeds, points)", xaxis_title="seed",
                      yaxis_title="points", width=700, height=400)
    return fig
