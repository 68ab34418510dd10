"""tidelog's benchmarks (run `python benchmarks/run.py`; see README.md here).

- `run.py`: the runner (arguments, repeats, goals, the JSON document);
- `backends.py`: the engines under test and their plain-driver baselines;
- `workloads/`: the workloads and their registry;
- `common.py`: the sizes and the progress log they share.
"""
