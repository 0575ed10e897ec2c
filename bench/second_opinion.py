"""A supervised second opinion from operators' labels (issue 19, item 3): does it help?

The protocol the issue asks for: on each real development corpus, the online detector's
incident openings are labelled as an operator would (true: inside a labelled window, false:
outside); the openings of half of the series are the "operator feedback" a model is trained
on, and the model judges the openings of the other half (then the halves swap: 2 folds, by
series, so no series is judged by a model that saw its own labels). An opening the model
gives a probability under ``--hold-below`` would be held back. Two models:

* ``logistic`` — vigil's :class:`~vigil.detectors.second_opinion.SecondOpinion` (what the
  notifier runs) on :func:`~vigil.detectors.second_opinion.opening_features`: the opening's
  z, hour of the day, the series' openings in the week before, the steps since its previous
  one, the total variation of its last 100 steps;
* ``gbm`` — scikit-learn's gradient-boosted trees on the same features;
* ``perceptron`` — the article's network (:class:`vigil.lab.perceptron.WindowPerceptron`) on
  the 100 steps up to the opening, min-max scaled, plus their total variation.

Run::

    PYTHONPATH=. python -m bench.second_opinion [--data ../shared/data/nab-dev ...]

It prints ``name: value unit`` lines per corpus and model: the held-out openings, true and
false, and how many of each a hold-back at each threshold removes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from vigil.detectors.online import DetectorParams
from vigil.detectors.second_opinion import SecondOpinion, opening_features
from vigil.lab.datasets import load_dataset, series_steps
from vigil.lab.models import OnlineModel
from vigil.lab.perceptron import WindowPerceptron, series_folds, window_inputs

__all__ = ["openings_table"]

WINDOW = 100
THRESHOLDS = (0.1, 0.25, 0.5)


def openings_table(path: str) -> dict[str, np.ndarray]:
    """Every opening after its series' first window: series, label, window and features."""
    ds = load_dataset(path)
    steps = series_steps(ds)
    by_step: dict[int, list[str]] = {}
    for sid, step in steps.items():
        by_step.setdefault(step, []).append(sid)
    rows: dict[str, list] = {k: [] for k in ("series", "true", "window", "features")}
    for step, ids in by_step.items():
        data = [(ds.series[s].values, ds.series[s].ts_ms) for s in ids]
        model = OnlineModel(step_s=step, params=DetectorParams(step_s=step)).fit(None, None)
        for sid, (values, ts), (z, opened) in zip(
                ids, data, model.score_and_openings_many(data), strict=True):
            labels = [lab for lab in ds.labels if lab.series == sid]
            at = np.flatnonzero(opened)
            for n, i in enumerate(at):
                if i < WINDOW - 1 or not np.isfinite(values[i - WINDOW + 1 : i + 1]).all():
                    continue
                t = int(ts[i])
                recent = values[i - WINDOW + 1 : i + 1]
                rows["series"].append(sid)
                rows["true"].append(any(lab.start_ms <= t <= lab.end_ms for lab in labels))
                rows["window"].append(window_inputs(recent, WINDOW)[0])
                rows["features"].append(opening_features(
                    float(z[i]), t, ts[at[:n]].tolist(), step * 1000, recent))
    return {k: np.asarray(v) for k, v in rows.items()}


def _fit_predict(kind: str, train: np.ndarray, y: np.ndarray, test: np.ndarray) -> np.ndarray:
    if len(set(y.tolist())) < 2:  # one class only: no opinion
        return np.full(len(test), 0.5)
    if kind == "perceptron":
        model = WindowPerceptron(window=WINDOW, epochs=60, lr=1e-3).fit_windows(train, y)
        return model.predict_windows(test)
    if kind == "logistic":
        return SecondOpinion().fit(train, y).probability(test)
    from sklearn.ensemble import HistGradientBoostingClassifier

    model = HistGradientBoostingClassifier(max_iter=100, learning_rate=0.1, max_depth=3,
                                           class_weight="balanced", random_state=0)
    return model.fit(train, y).predict_proba(test)[:, 1]


def held_out_probabilities(table: dict[str, np.ndarray], kind: str) -> np.ndarray:
    """Each opening's probability of being true, from a model trained on the other half's
    series (2 folds by series)."""
    ids = sorted(set(table["series"].tolist()))
    p = np.full(len(table["true"]), np.nan)
    x = table["window" if kind == "perceptron" else "features"]
    y = table["true"].astype(float)
    for fold in series_folds(ids, 2, seed=0):
        test = np.isin(table["series"], fold)
        p[test] = _fit_predict(kind, x[~test], y[~test], x[test])
    return p


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", action="append",
                        default=None, help="A labelled corpus (repeatable).")
    args = parser.parse_args(argv)
    for path in args.data or ["../shared/data/nab-dev", "../shared/data/cmd-dev"]:
        name = Path(path).name
        table = openings_table(path)
        true = table["true"]
        print(f"second_opinion_{name}_openings: {len(true)} incidents")
        print(f"second_opinion_{name}_true_openings: {int(true.sum())} incidents")
        for kind in ("logistic", "gbm", "perceptron"):
            p = held_out_probabilities(table, kind)
            for threshold in THRESHOLDS:
                held = p < threshold
                tag = f"second_opinion_{name}_{kind}_below_{threshold:g}"
                print(f"{tag}_false_held: {int((held & ~true).sum())} incidents")
                print(f"{tag}_true_held: {int((held & true).sum())} incidents")


if __name__ == "__main__":
    main()
