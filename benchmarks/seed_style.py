"""The seed's way: one Keras cut model per layer, `predict` over every image, a LinearSVC per cut.

Prints one JSON line with the time spent extracting, fitting and in total, per layer and summed.

    .venv/bin/python -m benchmarks.seed_style --data FOLDER/cifar-10-batches-py
"""

from __future__ import annotations

from benchmarks import reference  # first: it starts the clock before the heavy imports

import time  # noqa: E402

import keras  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402


def sweep(args, x_train, y_train, x_test, y_test) -> tuple[float, float, dict]:
    x_tr, x_val, y_tr, y_val = train_test_split(x_train, y_train, test_size=0.2, stratify=y_train, random_state=0)
    per_layer, extraction, fitting = {}, 0.0, 0.0
    for layer in args.layers:
        t0 = time.perf_counter()
        base = reference.vgg16()
        cut = keras.Model(inputs=base.input, outputs=base.get_layer(layer).output)
        f_tr, f_val, f_test = (reference.predict(cut, x, args.batch_size).reshape(len(x), -1)
                               for x in (x_tr, x_val, x_test))
        t1 = time.perf_counter()
        svc, fit = reference.linear_svc(f_tr, y_tr, args.C)
        accuracy = {split: float(svc.score(f, y)) for split, f, y in
                    (("train", f_tr, y_tr), ("val", f_val, y_val), ("test", f_test, y_test))}
        per_layer[layer] = {"extraction_s": t1 - t0, "fit_s": fit, "features": f_tr.shape[1], **accuracy}
        extraction += t1 - t0
        fitting += fit
    return extraction, fitting, per_layer


if __name__ == "__main__":
    reference.main(__doc__, sweep)
