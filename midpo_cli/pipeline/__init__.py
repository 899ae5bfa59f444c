"""The pipeline: orchestration above the stages (docs/design.md §3).

- `graph`: the stage graph, fingerprints, and each stage's status (done / will run / will resume / blocked);
- `changes`: why a finished stage re-runs, in recipe keys;
- `folders`: a stage folder — what midpo owns there, prepare (keep `.previous/`), finish, restore;
- `preflight`: every check that needs no model, before a stage folder is touched;
- `status`: each stage's state and why, from its folder alone;
- `run`: `make_context`, `run_stage` and `run_pipeline` under the run-dir lock; it imports each stage when it
  runs. The stages import none of this: what they share is `midpo_cli.stages.kit`.
"""
