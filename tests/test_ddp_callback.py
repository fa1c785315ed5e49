"""BiasProbeCallback under 2-process CPU DDP (gloo): no hang, one record per evaluation, the same
values logged on both ranks. Lightning's own launcher starts the second process by rerunning the
script, so the run is a script in a subprocess, killed as a group if it ever hangs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from clipprobe.evaluation.plot import read_records

LIMIT = 420  # seconds before the run counts as hung
pytestmark = pytest.mark.timeout(LIMIT + 60)
SMALL = {"image_size": 64, "objects": [2, 3], "scenes_per_layout": 6, "workers": 1,
         "names": ["person", "bicycle", "car", "motorcycle", "airplane", "bus"]}  # fmt: skip

SCRIPT = """
import json, sys
from pathlib import Path

import torch

torch.set_num_threads(1)
import lightning as L
from lightning.pytorch.loggers import CSVLogger

from clipprobe.training.callbacks import BiasProbeCallback
from clipprobe.data.shards import ShardDataModule
from clipprobe.training.module import CLIPModule

corpus, cache, run, small = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])


class Dump(L.Callback):
    def on_train_end(self, trainer, pl_module):
        probe = next(c for c in trainer.callbacks if isinstance(c, BiasProbeCallback))
        Path(run, f"history.rank{trainer.global_rank}.json").write_text(json.dumps(probe.history))


if __name__ == "__main__":
    L.seed_everything(0, verbose=False)
    module = CLIPModule("clipprobe-tiny", warmup_steps=2, schedule_steps=8)
    data = ShardDataModule(corpus, batch_size=4, num_workers=0, shuffle_buffer=8, num_samples=64)
    probe = BiasProbeCallback(["tor", "ior"], ["comco"], 2, generate=small, options={"tor": {"num_captions": 40}},
                              cache_dir=cache)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy="ddp", max_steps=5, default_root_dir=run,
                        logger=CSVLogger(run, name="", version=""), callbacks=[probe, Dump()],
                        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
                        enable_checkpointing=False)
    trainer.fit(module, data)
"""


def test_two_process_ddp_agrees_and_finishes(tmp_path: Path, corpus: str) -> None:
    script, run, cache = tmp_path / "ddp_fit.py", tmp_path / "run", tmp_path / "cache"  # empty cache: rank 0 generates
    script.write_text(SCRIPT)
    run.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "WANDB_", "MASTER_", "LOCAL_RANK"))}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, str(script), corpus, str(cache), str(run), json.dumps(SMALL)],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=LIMIT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher's second rank too
        out, _ = proc.communicate()
        pytest.fail(f"DDP run did not finish in {LIMIT} s:\n{out[-3000:]}")
    assert proc.returncode == 0, out[-3000:]

    ranks = [json.loads((run / f"history.rank{r}.json").read_text()) for r in (0, 1)]
    assert [h["step"] for h in ranks[0]] == [0, 2, 4, 5]
    assert ranks[0] == ranks[1]  # the very same logged values on both ranks
    assert "probe/comco/tor/n2/share_1_all" in ranks[0][0]["metrics"]
    records = read_records(run / "probes.jsonl")
    assert [(r["step"], r["probe"]) for r in records] == [(s, p) for s in (0, 2, 4, 5) for p in ("tor", "ior")]
    assert [r["samples_seen"] for r in records[::2]] == [0, 16, 32, 40]  # 4 per rank and step, 2 ranks
    for r, h in zip(records[::2], ranks[0], strict=True):
        assert h["metrics"]["probe/comco/tor/n2/share_1_all"] == r["metrics"]["n2/share_1_all"]
    assert len(list(cache.glob("comco-*/manifest.json"))) == 1
