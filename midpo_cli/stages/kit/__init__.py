"""The stage kit: what every stage module builds on, below the stages and above the libraries.

- `context`: the `StageContext` a stage receives (its recipe, folder, inputs' manifests, fingerprint);
- `inputs`: what stages read through their context (engine settings, upstream models, template, pairs);
- `dev_set`: the recipe's one dev prompt set;
- `dev_choice`: the model side of every dev choice (an expert's step, the switch's threshold).

The kit imports no stage and nothing of `midpo_cli.pipeline`: the pipeline prepares the folder and the
context and calls a stage; a stage reads its context through the kit.
"""
