"""A careful hand-written one-pass sweep: one multi-output model, one `predict`, then a LinearSVC per cut.

No tracking, reports or plots: the floor that tlsweep's overhead is measured against. Prints one JSON line.

    .venv/bin/python -m benchmarks.one_pass --data FOLDER/cifar-10-batches-py
"""

from __future__ import annotations

from benchmarks import reference  # first: it starts the clock before the heavy imports

import time  # noqa: E402

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402


def sweep(args, x_train, y_train, x_test, y_test) -> tuple[float, float, dict]:
    t0 = time.perf_counter()
    base = reference.vgg16()
    model = keras.Model(inputs=base.input, outputs=[base.get_layer(layer).output for layer in args.layers])
    outputs = reference.predict(model, np.concatenate([x_train, x_test]), args.batch_size)
    features = {layer: out.reshape(len(out), -1) for layer, out in zip(args.layers, outputs)}
    extraction = time.perf_counter() - t0

    n = len(x_train)
    tr, val = train_test_split(np.arange(n), test_size=0.2, stratify=y_train, random_state=0)
    per_layer, fitting = {}, 0.0
    for layer in args.layers:
        X = features[layer]
        svc, fit = reference.linear_svc(X[tr], y_train[tr], args.C)
        fitting += fit
        per_layer[layer] = {"fit_s": fit, "features": X.shape[1], "train": float(svc.score(X[tr], y_train[tr])),
                            "val": float(svc.score(X[val], y_train[val])), "test": float(svc.score(X[n:], y_test))}
    return extraction, fitting, per_layer


if __name__ == "__main__":
    reference.main(__doc__, sweep)
