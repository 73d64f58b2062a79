"""Infrastructure every stage imports: configs, JSON/YAML I/O, the weights artifact, model
loading, per-sample losses, distributed helpers and trackers.

Nothing here imports a stage package (data, sampling, train, domain, eval, report, pipeline);
`tests/test_layering.py` enforces the direction.
"""
