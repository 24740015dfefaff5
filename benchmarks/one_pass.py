"""A careful hand-written one-pass sweep: one multi-output model, one `predict`, then a LinearSVC per cut.

No tracking, reports or plots: the floor that tlsweep's overhead is measured against. Prints one JSON line.
"""

from __future__ import annotations

import json
import time

start = time.perf_counter()

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras.applications.vgg16 import VGG16, preprocess_input  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402
from sklearn.svm import LinearSVC  # noqa: E402

from cifar_like import load_classes, reference_args  # noqa: E402


def main() -> None:
    args = reference_args(__doc__.splitlines()[0])
    x_train, y_train, x_test, y_test = load_classes(args.data, args.classes)

    t0 = time.perf_counter()
    keras.utils.set_random_seed(0)
    base = VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
    model = keras.Model(inputs=base.input, outputs=[base.get_layer(layer).output for layer in args.layers])
    x_all = preprocess_input(np.concatenate([x_train, x_test]).astype("float32"))
    outputs = model.predict(x_all, batch_size=args.batch_size, verbose=0)
    features = {layer: out.reshape(len(out), -1) for layer, out in zip(args.layers, outputs)}
    extraction = time.perf_counter() - t0

    n = len(x_train)
    tr, val = train_test_split(np.arange(n), test_size=0.2, stratify=y_train, random_state=0)
    per_layer, fitting = {}, 0.0
    for layer in args.layers:
        X = features[layer]
        t1 = time.perf_counter()
        svc = LinearSVC(C=args.C, random_state=0).fit(X[tr], y_train[tr])
        fit = time.perf_counter() - t1
        fitting += fit
        per_layer[layer] = {"fit_s": fit, "features": X.shape[1], "train": float(svc.score(X[tr], y_train[tr])),
                            "val": float(svc.score(X[val], y_train[val])), "test": float(svc.score(X[n:], y_test))}
    total = time.perf_counter() - start
    print(json.dumps({"images": len(x_all), "extraction_s": extraction, "fit_s": fitting, "total_s": total,
                      "layers": per_layer}))


if __name__ == "__main__":
    main()
