"""Training: `tunery.train(config)` turns a base model and a dataset into a run directory.

Contract: a run reads a `TrainConfig` and dataset files, and writes one run directory
(`rundir.py`: config.yaml, run.json, metrics.jsonl, checkpoints/, adapter/ or model/) that every
later step (evaluation, export, serving) reads. A killed run resumes exactly from its last
checkpoint. Only rank 0 writes under torchrun. Knows nothing about HTTP, the CLI or the store.

Where things are: `run.py` set-up and wrap-up around `loop.py` (the loop, top to bottom);
`run_data.py` the run's examples and their order; `batch_loss.py` the objective;
`precision.py` precision and threads; `trainable_model.py` loading and adapters; `optim.py`,
`checkpoints.py`, `auto.py`, `prefix.py`, `resources.py`, `distributed.py`, `fsdp.py`,
`progress.py`, `sinks.py` the pieces beside the loop. Importing this package loads no torch.
"""
