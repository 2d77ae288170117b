"""A training run killed right after a checkpoint and resumed ends with exactly the weights of an unbroken run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from commonspace.train import CheckpointError, TrainConfig, Trainer
from helpers_train import build_model, final_state, make_data, run_training

SCRIPT = Path(__file__).with_name("helpers_train.py")


def _killed_run(out_dir: Path, stop_after: int, *extra: str) -> None:
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out_dir), "--stop-after", str(stop_after),
                           *extra], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr  # died in the os._exit callback, not by finishing
    assert (out_dir / "checkpoint" / "trainer.json").is_file()
    assert not (out_dir / "model").exists()


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("staged,stop_after", [(False, 3), (True, 2), (True, 3)])
def test_killed_run_resumes_to_identical_weights(tmp_path, staged, stop_after):
    extra = ["--epochs", "5", "--dropout", "0.3"] + (["--staged"] if staged else [])
    # staged: enc runs 2 epochs, then dec 5; a kill after epoch 2 hits the stage boundary, after 3 the
    # middle of the second stage (optimizer state and best weights restored)
    _killed_run(tmp_path / "run", stop_after, *extra)
    resumed, hist = run_training(tmp_path / "run", epochs=5, dropout=0.3, staged=staged)
    reference, ref_hist = run_training(tmp_path / "ref", epochs=5, dropout=0.3, staged=staged)
    assert _equal(final_state(resumed), final_state(reference))
    assert [h["train"] for h in hist] == [h["train"] for h in ref_hist]
    assert [h["val_loss"] for h in hist] == [h["val_loss"] for h in ref_hist]
    assert len((tmp_path / "run" / "log.jsonl").read_text().splitlines()) == len(ref_hist)


def test_resume_after_completion_and_mismatch(tmp_path):
    model, hist = run_training(tmp_path, epochs=2)
    again, hist2 = run_training(tmp_path, epochs=2)  # nothing left to do: same weights, same history
    assert _equal(final_state(model), final_state(again))
    assert [h["train"] for h in hist2] == [h["train"] for h in hist]
    with pytest.raises(CheckpointError, match=r"different run \(changed: train_config.epochs: 2 -> 3"):
        run_training(tmp_path, epochs=3)
    with pytest.raises(CheckpointError, match="resume=False"):
        run_training(tmp_path, epochs=2, dropout=0.5)
    other = build_model(hidden=5)
    with pytest.raises(CheckpointError, match="new out_dir"):
        Trainer(other, TrainConfig.for_model(other, epochs=2, out_dir=tmp_path, progress=False)).fit(make_data())
    _, fresh = run_training(tmp_path, epochs=3, resume=False)  # starting over is allowed
    assert len(fresh) == 3


def test_checkpoint_every_resumes_from_the_last_written_epoch(tmp_path):
    def go(out, stop=None):
        model = build_model(dropout=0.2)
        cfg = TrainConfig.for_model(model, epochs=5, out_dir=out, checkpoint_every=2, progress=False)
        seen = []

        def cb(t, r):
            seen.append(r["epoch"])
            if stop is not None and r["epoch"] == stop:
                raise KeyboardInterrupt

        try:
            Trainer(model, cfg, callbacks=[cb]).fit(make_data())
        except KeyboardInterrupt:
            pass
        return model, seen

    _, seen = go(tmp_path / "a", stop=3)  # epoch 3 was not checkpointed: resume repeats it
    assert seen == [1, 2, 3]
    resumed, seen = go(tmp_path / "a")
    assert seen == [3, 4, 5]
    ref, _ = go(tmp_path / "b")
    assert _equal(final_state(resumed), final_state(ref))


def test_killed_run_on_a_dataset_folder_resumes_to_the_in_memory_weights(tmp_path):
    """Issue 15: a run reading memory-mapped batches, killed after a checkpoint and resumed, ends with the weights
    of an unbroken run on the same data held in memory."""
    folder = tmp_path / "data"
    _killed_run(tmp_path / "run", 2, "--epochs", "4", "--dropout", "0.3", "--folder", str(folder))
    resumed, hist = run_training(tmp_path / "run", epochs=4, dropout=0.3, folder=folder)
    reference, ref_hist = run_training(tmp_path / "ref", epochs=4, dropout=0.3)
    assert _equal(final_state(resumed), final_state(reference))
    assert [h["train"] for h in hist] == [h["train"] for h in ref_hist]
