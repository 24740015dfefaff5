"""The stages one run passes through, grouped by role:

- `data`: the image sets (CIFAR-10, scikit-learn's digits, a folder of your own) and their splits;
- `backbone`: the keras.applications CNNs, Keras-Hub transformers and saved Keras models, their cuts and stages;
- `features`: one forward pass for every cut, the poolings, and the on-disk feature cache;
- `probe`: the linear probes (a registry), fitting and choosing C, and the pipeline that replays every stage on
  new images;
- `analysis`: per-split reports and linear CKA between cuts.

Stages take keyword-only, typed arguments, return results, and never import tracking.
"""
