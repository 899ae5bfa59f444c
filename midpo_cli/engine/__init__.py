"""Training engine: one DeepSpeed loop for every stage (loop.train), its DeepSpeed config, checkpoints,
metrics, verified artifacts, the DPO machinery the experts and the router share (preference), and the
launcher command builder. Import submodules directly: `from midpo_cli.engine.loop import train` — this
package imports nothing heavy itself, so `launch` stays usable without torch."""
