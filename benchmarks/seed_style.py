"""The seed's way: one Keras cut model per layer, `predict` over every image, a LinearSVC per cut.

Prints one JSON line with the time spent extracting, fitting and in total, per layer and summed.
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
    x_tr, x_val, y_tr, y_val = train_test_split(x_train, y_train, test_size=0.2, stratify=y_train, random_state=0)

    per_layer, extraction, fitting = {}, 0.0, 0.0
    for layer in args.layers:
        t0 = time.perf_counter()
        keras.utils.set_random_seed(0)
        base = VGG16(include_top=False, weights=None, input_shape=(32, 32, 3))
        cut = keras.Model(inputs=base.input, outputs=base.get_layer(layer).output)
        f_tr, f_val, f_test = (
            cut.predict(preprocess_input(x.astype("float32")), batch_size=args.batch_size, verbose=0).reshape(len(x), -1)
            for x in (x_tr, x_val, x_test)
        )
        t1 = time.perf_counter()
        svc = LinearSVC(C=args.C, random_state=0).fit(f_tr, y_tr)
        t2 = time.perf_counter()
        accuracy = {split: float(svc.score(f, y)) for split, f, y in
                    (("train", f_tr, y_tr), ("val", f_val, y_val), ("test", f_test, y_test))}
        per_layer[layer] = {"extraction_s": t1 - t0, "fit_s": t2 - t1, "features": f_tr.shape[1], **accuracy}
        extraction += t1 - t0
        fitting += t2 - t1
    total = time.perf_counter() - start
    print(json.dumps({"images": len(x_train) + len(x_test), "extraction_s": extraction, "fit_s": fitting,
                      "total_s": total, "layers": per_layer}))


if __name__ == "__main__":
    main()
