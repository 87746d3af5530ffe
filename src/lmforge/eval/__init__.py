"""Evaluation (lifecycle stages 5 and 7): task definitions, prompt rendering, a batched
log-likelihood scorer, metrics with standard errors, built-in suites and the runner that
turns a model and a list of tasks into one JSON-able report."""
