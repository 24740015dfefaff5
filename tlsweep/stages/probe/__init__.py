"""The linear probes on frozen features: the registry of classifiers (`probes`), fitting and choosing C
(`classify`), the solvers tlsweep adds (`lbfgs_svc`, `newton_svc`, and `line_search_svc` with its parts
`newton_steps` and `support_rows`), and the whole pipeline as one predictor of raw images (`pipeline`)."""
