"""The pipeline machinery around the stages (docs/design.md §3).

- `graph`: the stage graph, fingerprints, and each stage's status (done / will run / will resume / blocked);
- `context`: the `StageContext` a stage receives, and its folder (prepare, keep `.previous/`, restore);
- `inputs`: what stages read through their context (engine settings, upstream models, template, pairs);
- `preflight`: every check that needs no model, before a stage folder is touched;
- `run`: `run_stage` and `run_pipeline` under the run-dir lock; the one module that imports the stages,
  each only when it runs.
"""
