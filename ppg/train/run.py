"""What every trainer does around its loop, in one place (offline PPG, online PPG, the reward
model), so the three cannot drift apart:

    run = TrainingRun(name, ident, p.train, total, state, seed)  # working folder, resume point, seeds
    engine = run.start(deepspeed, model, config)                  # training mode, state resumed
    run.track(p.mlflow, tags, params, inputs)                     # the MLflow run, the progress bar
    while run.state["step"] < total:
        ... one optimizer step ...
        if run.step_done(metrics):                                # log, bar, checkpoint when due
            return run.stopped()                                  # stop_after (tests of resume)
    run.finish(tok, out, result)                                  # output, run closed, engine freed

The run's identity (`ident`: the content of everything it reads and every knob that changes its
result) names its checkpoint folder; only a complete checkpoint of the same identity is resumed
(ppg.train.checkpoint). Checkpoints hold the trainer's `state` (its step, MLflow run and whatever
it needs to continue, such as a sampler's state) and every generator's.
"""

from pathlib import Path

from ppg import tracking
from ppg.lineage.record import input_datasets, run_environment
from ppg.train import checkpoint
from ppg.train import engine as eng


class TrainingRun:
    def __init__(self, name: str, ident: dict, cfg, total: int, state: dict, seed: int, rank0: bool = True,
                 stop_after: int | None = None):
        """name: the run's folder under cfg.workdir and its MLflow name (train-<name>). cfg: the
        train section (workdir, checkpoint_every, keep_checkpoints). total: optimizer steps.
        state: the trainer's own state at step 0 (a checkpoint replaces it in start()).
        stop_after=N: step_done says stop after N steps."""
        self.name, self.ident, self.total, self.rank0, self.stop_after = name, ident, total, rank0, stop_after
        self.every, self.keep = cfg.checkpoint_every, cfg.keep_checkpoints
        self.fp = checkpoint.fingerprint(ident)
        self.workdir = checkpoint.workdir_for(Path(cfg.workdir) / name, self.fp, ident, rank0)
        self.point = checkpoint.find_resume(self.workdir, self.fp, ident)
        self.state = {"step": 0, "mlflow_run_id": None, "history": [], **state}
        self.engine = self.client = self.run_id = self.bar = None
        eng.seed_all(seed)  # before the trainer builds its model: fresh LoRA adapters draw from torch's generator

    @property
    def resumed(self) -> bool:
        return self.point is not None

    def start(self, deepspeed, model, config: dict, gradient_checkpointing: bool = False):
        """The engine over the model, in training mode, with the checkpoint's weights and state."""
        self.engine = eng.start(deepspeed, model, config, gradient_checkpointing)
        # from_pretrained gives eval mode: layers would skip gradient checkpointing and dropout would be off
        self.engine.train()
        self.state = eng.resume(self.engine, self.workdir, self.point, self.state)
        return self.engine

    def track(self, mlflow_cfg, tags: dict, params: dict, inputs: dict, progress: bool = True) -> str | None:
        """Open (or, resumed, continue) the MLflow run on rank 0 with the environment's tags and
        the inputs as datasets (digest: DVC's md5), and the progress bar. The run id, or None on
        other ranks."""
        if not self.rank0:
            return None
        self.client = tracking.client(mlflow_cfg)
        self.run_id = tracking.open_run(self.client, mlflow_cfg, self.state["mlflow_run_id"], name=f"train-{self.name}",
                                        tags={**tags, **run_environment()}, params={**params, "fingerprint": self.fp})
        self.client.log_inputs(self.run_id, input_datasets(inputs))
        self.state["mlflow_run_id"] = self.run_id
        self.bar = eng.progress_bar(progress, self.total, self.state["step"], f"train {self.name}")
        return self.run_id

    def log(self, metrics: dict, step: int | None = None):
        """Metrics at `step` (default: the current one), from rank 0."""
        if self.rank0:
            tracking.log_metrics(self.client, self.run_id, metrics, self.state["step"] if step is None else step)

    def step_done(self, metrics: dict, **shown) -> bool:
        """An optimizer step is over: count it, log its metrics, move the bar (showing `shown`) and
        checkpoint every checkpoint_every steps and at the last. Every rank calls it (checkpoints
        are saved by all). True when stop_after steps are done: return stopped()."""
        self.state["step"] += 1
        self.log(metrics)
        if self.bar:
            self.bar.update(1)
            self.bar.set_postfix(**shown)
        if self.state["step"] % self.every == 0 or self.state["step"] == self.total:
            eng.save(self.engine, self.workdir, self.state, self.fp, self.ident, self.keep, self.rank0)
        return self.stop_after is not None and self.state["step"] >= self.stop_after

    def stopped(self) -> dict:
        if self.bar:
            self.bar.close()
        return {"stopped_at": self.state["step"], "mlflow_run_id": self.run_id}

    def record(self) -> dict:
        """What a trainer's result says about the run: its steps, MLflow run, identity and folder."""
        return {"steps": self.state["step"], "mlflow_run_id": self.run_id, "fingerprint": self.fp,
                "workdir": str(self.workdir)}

    def finish(self, tok, out: Path, result: dict | None, merge: bool = False, also=None, artifacts=()):
        """Write the output from rank 0 (engine.write_output: it reloads to the trained model; merge
        when the adapters' own base is not where training started), log the named output files as
        artifacts, close the MLflow run and free the engine."""
        if self.bar:
            self.bar.close()
        if self.rank0:
            eng.write_output(self.engine, tok, Path(out), result, merge, also)
            self.log({"steps": self.state["step"]})
            for name in artifacts:
                self.client.log_artifact(self.run_id, str(Path(out) / name))
            self.client.set_terminated(self.run_id, "FINISHED")
        self.engine.destroy()
