"""Frozen-backbone features: one forward pass for every cut a sweep needs (`extraction`), the poolings that
turn a cut into a row of features (`pooling`), and the on-disk cache they are read from (`cache`)."""
