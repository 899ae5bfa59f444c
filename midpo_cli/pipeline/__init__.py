"""The pipeline: orchestration above the stages (docs/design.md §3).

- `graph`: the stage graph, fingerprints, and each stage's plan (done / will run / will resume / will restore /
  blocked / refused);
- `changes`: why a finished stage re-runs, in recipe keys;
- `owned`: what midpo owns in a stage folder (exact names, and the record of what a run wrote there); links refused;
- `folders`: a stage folder around a run — checked, prepared (keep `.previous/`), finished, restored;
- `preflight`: every check that needs no model, before a stage folder is touched;
- `status`: each stage's state and why, from its folder alone, and `stage_done`, the one test of done;
- `run`: `make_context`, `run_stage` and `run_pipeline` under the run-dir lock; it imports each stage when it
  runs. The stages import none of this: what they share is `midpo_cli.stages.kit`.
"""
