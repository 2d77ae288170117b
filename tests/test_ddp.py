"""Two-process CPU (gloo) data-parallel training matches single-process training.

Run by pytest, this file launches itself under ``python -m torch.distributed.run --nproc_per_node=2``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

EPOCHS = 4


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(out: Path) -> None:
    from commonspace.train import cleanup_distributed, get_rank, get_world_size
    from helpers_train import final_state, run_training

    # even global batches (16 = 8 + 8) with a checkpointing out_dir, then uneven ones (15 = 7 + 8)
    model, _ = run_training(out / "run", epochs=EPOCHS, batch_size=16)
    assert get_world_size() == 2
    if get_rank() == 0:
        save_file(final_state(model), str(out / "ddp16.safetensors"))
    model, _ = run_training(None, epochs=EPOCHS, batch_size=15)
    if get_rank() == 0:
        save_file(final_state(model), str(out / "ddp15.safetensors"))
    # staged: the DDP wrapper is rebuilt when the trainable parameters change
    model, _ = run_training(None, epochs=EPOCHS, batch_size=16, staged=True)
    if get_rank() == 0:
        save_file(final_state(model), str(out / "ddpstaged.safetensors"))
    # memory-mapped data (issue 15): each rank reads the rows of its own part of every global batch, nothing else
    from commonspace.data.dataset import LazyArray

    reads: dict[int, int] = {}
    take = LazyArray.take

    def counting_take(self, index):
        for i in torch.as_tensor(index).tolist():
            reads[i] = reads.get(i, 0) + 1
        return take(self, index)

    LazyArray.take = counting_take
    model, _ = run_training(None, epochs=EPOCHS, batch_size=16, folder=out / "data")
    LazyArray.take = take
    (out / f"reads{get_rank()}.json").write_text(json.dumps(reads))
    if get_rank() == 0:
        save_file(final_state(model), str(out / "ddpfolder.safetensors"))
    cleanup_distributed()


@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                    reason="this torch build has no torch.distributed gloo backend")
def test_two_process_ddp_matches_single_process(tmp_path):
    from helpers_train import final_state, folder_data, run_training

    folder_data(tmp_path / "data")  # written once here, not raced by the two ranks

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent),
                                                       os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", __file__, str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name, bs, staged in (("16", 16, False), ("15", 15, False), ("staged", 16, True), ("folder", 16, False)):
        ddp = load_file(str(tmp_path / f"ddp{name}.safetensors"))
        single, _ = run_training(None, epochs=EPOCHS, batch_size=bs, staged=staged)
        ref = final_state(single)
        assert ddp.keys() == ref.keys()
        for k in ref:
            assert torch.allclose(ddp[k], ref[k], atol=1e-5), (name, k, (ddp[k] - ref[k]).abs().max())
    # the 64 train rows, two modalities: across the ranks each row was read exactly once per epoch, and each
    # rank read half of them (its contiguous half of every global batch of 16)
    reads = [{int(k): v for k, v in json.loads((tmp_path / f"reads{r}.json").read_text()).items()} for r in (0, 1)]
    train_rows = range(64)
    assert all(reads[0].get(i, 0) + reads[1].get(i, 0) == 2 * EPOCHS for i in train_rows)
    assert [sum(r.get(i, 0) for i in train_rows) for r in reads] == [64 * EPOCHS, 64 * EPOCHS]
    # rank 0 alone wrote the log (one line per epoch), the checkpoint and the final model
    lines = (tmp_path / "run" / "log.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == list(range(1, EPOCHS + 1))
    assert (tmp_path / "run" / "checkpoint" / "trainer.json").is_file()
    assert (tmp_path / "run" / "model" / "model.safetensors").is_file()


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
