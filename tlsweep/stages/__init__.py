"""The stages one run passes through: data, backbone, features (and their cache), classifier, report; the
pipeline that replays them on new images; and linear CKA between cached features.

Stages take keyword-only, typed arguments, return results, and never import tracking.
"""
