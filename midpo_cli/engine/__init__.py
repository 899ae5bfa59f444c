"""Training engine: one DeepSpeed loop for every stage (loop.train), checkpoints, metrics, verified
artifacts, and the launcher command builder. Import submodules directly: `from midpo_cli.engine.loop
import train` — this package imports nothing heavy itself, so `launch` stays usable without torch."""
