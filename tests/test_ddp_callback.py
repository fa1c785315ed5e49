"""BiasProbeCallback under 2-process CPU DDP (gloo): no hang, one record per evaluation, the same
values logged on both ranks, the encoding split between the ranks, and the same records as one
process. Lightning's own launcher starts the second process by rerunning the script, so the run is a
script in a subprocess, killed as a group if it ever hangs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from clipprobe.evaluation.records import read_records

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
devices, steps = int(sys.argv[5]), int(sys.argv[6])


class Dump(L.Callback):
    def on_train_end(self, trainer, pl_module):
        probe = next(c for c in trainer.callbacks if isinstance(c, BiasProbeCallback))
        enc = probe._encoder
        work = {"texts": enc.texts_tokenized, "images": enc.images_prepared}
        Path(run, f"history.rank{trainer.global_rank}.json").write_text(json.dumps({"history": probe.history,
                                                                                    "work": work}))


if __name__ == "__main__":
    L.seed_everything(0, verbose=False)
    module = CLIPModule("clipprobe-tiny", warmup_steps=2, schedule_steps=8)
    data = ShardDataModule(corpus, batch_size=4, num_workers=0, shuffle_buffer=8, num_samples=64)
    # batch_size 1: every input encoded alone, so one process and two encode bit for bit alike
    probe = BiasProbeCallback(["tor", "ior", "itm"], ["comco"], 2, generate=small,
                              options={"tor": {"num_captions": 40}}, cache_dir=cache, batch_size=1,
                              benchmarks=["comco-objects"],
                              benchmark_generate={"comco-objects": {"per_class": 2, "image_size": 32}})
    trainer = L.Trainer(accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
                        max_steps=steps, default_root_dir=run,
                        logger=CSVLogger(run, name="", version=""), callbacks=[probe, Dump()],
                        enable_progress_bar=False, enable_model_summary=False, log_every_n_steps=1,
                        enable_checkpointing=False)
    trainer.fit(module, data)
"""


def _fit(tmp_path: Path, corpus: str, devices: int, steps: int, cache: Path) -> Path:
    script, run = tmp_path / "ddp_fit.py", tmp_path / f"run{devices}"
    script.write_text(SCRIPT)
    run.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "WANDB_", "MASTER_", "LOCAL_RANK"))}
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    argv = [sys.executable, str(script), corpus, str(cache), str(run), json.dumps(SMALL), str(devices), str(steps)]
    proc = subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)  # fmt: skip
    try:
        out, _ = proc.communicate(timeout=LIMIT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher's second rank too
        out, _ = proc.communicate()
        pytest.fail(f"DDP run did not finish in {LIMIT} s:\n{out[-3000:]}")
    assert proc.returncode == 0, out[-3000:]
    return run


def test_two_process_ddp_agrees_splits_the_work_and_matches_one_process(tmp_path: Path, corpus: str) -> None:
    cache = tmp_path / "cache"  # empty: rank 0 generates, rank 1 then finds the set
    run = _fit(tmp_path, corpus, 2, 5, cache)
    ranks = [json.loads((run / f"history.rank{r}.json").read_text()) for r in (0, 1)]
    assert [h["step"] for h in ranks[0]["history"]] == [0, 2, 4, 5]
    assert ranks[0]["history"] == ranks[1]["history"]  # the very same logged values on both ranks
    assert "probe/comco/tor/n2/share_1_all" in ranks[0]["history"][0]["metrics"]
    records = read_records(run / "probes.jsonl")
    probes = ("tor", "ior", "itm", "zeroshot_classification")
    assert [(r.step, r.probe) for r in records] == [(s, p) for s in (0, 2, 4, 5) for p in probes]
    assert [r.samples_seen for r in records[::4]] == [0, 16, 32, 40]  # 4 per rank and step, 2 ranks
    for r, h in zip(records[::4], ranks[0]["history"], strict=True):
        assert h["metrics"]["probe/comco/tor/n2/share_1_all"] == r.metric("n2/share_1_all").value
    for r, h in zip(records[3::4], ranks[0]["history"], strict=True):
        assert h["metrics"]["eval/comco-objects/acc1"] == r.metric("acc1").value and r.metric("acc1").count == 138
    assert len(list(cache.glob("comco-*/manifest.json"))) == 1
    assert len(list(cache.glob("comco-objects-*/clipprobe.json"))) == 1  # made once, by rank 0

    # One process on the same model (step 0: the same seeded initialisation) gives the same records,
    # having done all the work that the two ranks shared.
    single = _fit(tmp_path, corpus, 1, 1, cache)
    alone = json.loads((single / "history.rank0.json").read_text())["work"]
    for kind in ("texts", "images"):
        shares = [r["work"][kind] for r in ranks]
        assert all(0 < w < alone[kind] for w in shares) and sum(shares) >= alone[kind], (kind, shares, alone)
    one = {r.probe: r for r in read_records(single / "probes.jsonl") if r.step == 0}
    for r in records[:4]:
        assert [(m.name, m.count) for m in r.metrics] == [(m.name, m.count) for m in one[r.probe].metrics]
        for a, b in zip(r.metrics, one[r.probe].metrics, strict=True):
            assert (a.value == b.value) or (a.value != a.value and b.value != b.value), (r.probe, a.name)
