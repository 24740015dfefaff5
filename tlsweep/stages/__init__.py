"""The stages one run passes through: data, backbone, features (and their cache), classifier, report.

Stages take keyword-only, typed arguments, return results, and never import tracking.
"""
