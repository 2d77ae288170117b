"""Issue 10 item 7, the small things a user hits at once: n_classes from the labels, `evaluate --split all`
and rows with no modality, full names in `datasets` / `models`, plot titles inside the figure, CCA's
number of components chosen on val."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console
from typer.testing import CliRunner

import commonspace.cli as cli
from commonspace import CommonSpace
from commonspace.data.dataset import DataError, MultimodalDataset

runner = CliRunner()


def _run(*args: object) -> object:
    return runner.invoke(cli.app, [str(a) for a in args])


def _labelled(n: int = 120, seed: int = 0, multilabel: bool = False, classes: int = 3) -> MultimodalDataset:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    a = rng.normal(size=(classes, 6))[y] + 0.3 * rng.normal(size=(n, 6))
    b = rng.normal(size=(classes, 4))[y] + 0.3 * rng.normal(size=(n, 4))
    labels = np.eye(classes, dtype=np.int64)[y] if multilabel else y
    perm = rng.permutation(n)
    return MultimodalDataset({"image": a, "text": b}, labels=labels,
                             splits={"train": perm[: n // 2], "val": perm[n // 2: 3 * n // 4],
                                     "test": perm[3 * n // 4:]})


# ------------------------------------------------------------------ n_classes from the labels
@pytest.mark.parametrize("name", ["cvs", "mcvs", "rvs"])
def test_supervised_models_take_n_classes_from_the_labels(name: str) -> None:
    from commonspace.models.base import create_for_data

    data = _labelled(classes=4)
    m = create_for_data(name, data, dim=8, hidden=[8])
    assert m.config["n_classes"] == 4 and m.config["multilabel"] is False
    m.check_data(data)
    assert create_for_data(name, data, dim=8, hidden=[8], n_classes=7).config["n_classes"] == 7  # given: kept
    multi = create_for_data(name, _labelled(multilabel=True, classes=5), dim=8, hidden=[8])
    assert multi.config["n_classes"] == 5 and multi.config["multilabel"] is True


def test_hashing_models_take_classes_and_refuse_unlabelled_data() -> None:
    from commonspace.models.base import create_for_data

    data = _labelled(classes=3)
    u = create_for_data("unihash", data, method="csq", bits=16, text_widths=[8, 8])
    assert u.config["num_classes"] == 3
    assert create_for_data("mahash", data, bits=16, text_widths=[8, 8], image_width=8).config["bits"] == 16
    bare = MultimodalDataset(dict(data.features), splits=dict(data.splits))
    for name in ("cvs", "mcvs", "rvs", "mahash", "unihash"):
        with pytest.raises(DataError, match="supervised and needs class labels"):
            create_for_data(name, bare)
    # unsupervised models do not care
    assert create_for_data("cca", bare).config["n_components"] is None


def test_api_fits_cvs_without_n_classes() -> None:
    data = _labelled()
    x = {m: data.features[m].numpy() for m in data.modalities}
    cs = CommonSpace("cvs", epochs=1, dim=8, hidden=[8], progress=False).fit(x, labels=data.labels.numpy())
    assert cs.model_.config["n_classes"] == 3


# ------------------------------------------------------------------ evaluate --split all, empty rows
def _npz_with_empty_rows(path: Path, n: int = 120, empty: int = 6) -> Path:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, n)
    a = rng.normal(size=(3, 6))[y] + 0.3 * rng.normal(size=(n, 6))
    b = rng.normal(size=(3, 4))[y] + 0.3 * rng.normal(size=(n, 4))
    mask = np.ones((n, 2), dtype=bool)
    mask[::9, 1] = False
    mask[1:1 + 2 * empty:2] = False  # rows with no modality at all
    a[~mask[:, 0]], b[~mask[:, 1]] = 0, 0
    np.savez(path, x_image=a, x_text=b, labels=y, mask=mask, modalities=np.array(["image", "text"]))
    return path


def test_evaluate_split_all_leaves_out_rows_with_no_modality(tmp_path: Path) -> None:
    data = _npz_with_empty_rows(tmp_path / "d.npz", n=120, empty=6)
    run = tmp_path / "run"
    r = _run("train", "--data", data, "--model", "cca", "--out", run, "--no-progress")
    assert r.exit_code == 0, r.output
    ev = tmp_path / "ev.json"
    r = _run("evaluate", "--model", run, "--data", data, "--split", "all", "--json", ev)
    assert r.exit_code == 0, r.output
    assert "114 items" in r.output and "6 rows with no modality present left out" in r.output
    res = json.loads(ev.read_text())
    assert res["excluded_empty_rows"] == 6
    assert res["joint"]["database"] == 114  # the empty rows are in no database
    assert res["image->image"]["database"] == 114 and res["text->text"]["database"] < 114


# ------------------------------------------------------------------ full names in the tables
def _names_whole(output: str, names: list[str]) -> None:
    lines = output.splitlines()
    for name in names:
        assert any(f" {name} " in ln for ln in lines), f"{name!r} is not whole on any line:\n{output}"
    assert "…" not in output


@pytest.mark.parametrize("width", [None, 80, 60])
def test_datasets_and_models_never_cut_a_name(width: int | None, monkeypatch: pytest.MonkeyPatch) -> None:
    from commonspace.data import builtin
    from commonspace.models.base import available_models

    if width is not None:
        monkeypatch.setattr(cli, "out", Console(width=width))
    r = _run("datasets")
    assert r.exit_code == 0, r.output
    _names_whole(r.output, [d["name"] for d in builtin.available()])
    r = _run("models")
    assert r.exit_code == 0, r.output
    _names_whole(r.output, available_models())
    assert "`" not in r.output and ":class:" not in r.output
    assert "[x1," in r.output  # ae_concat's markup is gone, its text is kept (wrapping may split the line)


def test_datasets_piped_prints_whole_names() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES")}
    p = subprocess.run([sys.executable, "-m", "commonspace", "datasets"], capture_output=True, text=True,
                       env=env, timeout=120, check=True)
    _names_whole(p.stdout, ["digits-halves", "mnist5k-halves", "noisy-digits-fsdd", "fsdd-spectrogram"])


def test_doc_summary_strips_markup() -> None:
    s = cli._doc_summary("M-CVS: CVS by stage. ``stage_order`` as :class:`CVS`.\n\n    More.")
    assert s == "M-CVS: CVS by stage."
    s = cli._doc_summary("Uses ``a`` and `b` and :func:`~x.y` (Sec. 3.2 here).")
    assert s == "Uses a and b and x.y (Sec. 3.2 here)."


# ------------------------------------------------------------------ plot titles
@pytest.mark.parametrize("title", ["two-digits: precision-recall (Hamming radius), 32 bits, 3 seed(s)",
                                   "W" * 150, "WWWW mmmm " * 25])
def test_plot_title_lies_inside_the_figure(title: str, tmp_path: Path) -> None:
    from commonspace.eval.plots import line_figure, plot_pr_curves

    fig = line_figure({"a": ([0.0, 1.0], [1.0, 0.0])}, title=title, xlabel="recall", ylabel="precision")
    box = fig.axes[0].title.get_window_extent(fig.canvas.get_renderer())
    assert 0 <= box.x0 and box.x1 <= fig.bbox.width and box.y1 <= fig.bbox.height
    assert "".join(fig.axes[0].title.get_text().split()) == "".join(title.split())  # wrapped, nothing dropped
    assert plot_pr_curves({"a": ([1.0, 0.5], [0.1, 0.9])}, tmp_path / "pr.png", title=title).exists()


# ------------------------------------------------------------------ CCA: n_components chosen on val
def _mfeat() -> MultimodalDataset:
    from commonspace.data import builtin
    from commonspace.data.dataset import Standardizer

    d = builtin.load("uci-mfeat", views=("pix", "fou")).select(["pix", "fou"])
    return Standardizer().fit(d, "train").transform(d)


def _cross_map(m, data: MultimodalDataset) -> tuple[float, float]:
    from commonspace.eval.retrieval import retrieval_metrics

    b = data.batch(data.split("test"))
    with torch.no_grad():
        e = m.encode(b)
    y = b.labels
    return (float(retrieval_metrics(e["pix"], e["fou"], y, y)["map"]),
            float(retrieval_metrics(e["fou"], e["pix"], y, y)["map"]))


def test_cca_chooses_n_components_on_val_and_keeps_a_given_one(tmp_path: Path) -> None:
    from commonspace.models import create
    from commonspace.train.checkpoint import load_model, save_model

    data = _mfeat()
    m = create("cca", data.dims)
    m.fit_closed_form(data, "train")
    assert m.selection is not None and m.selection["n_components"] == 8 == m.k == m.config["n_components"]
    assert set(m.selection["scores"]) == {2, 4, 8, 10, 16, 32, 64}
    assert m.proj1.shape == (240, 8) and m.corr.shape == (8,)
    a, b = _cross_map(m, data)
    assert a > 0.55 and b > 0.55  # the bench's 0.573 / 0.585; all 76 components give 0.239 / 0.241
    save_model(tmp_path / "m", m)
    back = load_model(tmp_path / "m").model
    assert back.k == 8 and _cross_map(back, data) == (a, b)

    given = create("cca", data.dims, n_components=20)
    given.fit_closed_form(data, "train")
    assert given.k == 20 and given.selection is None and given.config["n_components"] == 20
    no_val = data.replace(splits={k: v for k, v in data.splits.items() if k != "val"})
    full = create("cca", data.dims)
    full.fit_closed_form(no_val, "train")
    assert full.k == 76 and full.selection is None and full.config["n_components"] is None


def test_cli_cca_on_mfeat_gets_the_bench_map(tmp_path: Path) -> None:
    run = tmp_path / "run"
    r = _run("train", "--data", "uci-mfeat", "--modalities", "pix,fou", "--model", "cca", "--out", run,
             "--no-progress")
    assert r.exit_code == 0, r.output
    assert json.loads((run / "model" / "config.json").read_text())["config"]["n_components"] == 8
    assert "n_components=8 chosen on the 'val' split" in r.output
    ev = tmp_path / "ev.json"
    r = _run("evaluate", "--model", run, "--data", "uci-mfeat", "--modalities", "pix,fou", "--json", ev)
    assert r.exit_code == 0, r.output
    res = json.loads(ev.read_text())
    assert res["pix->fou"]["map"] > 0.55 and res["fou->pix"]["map"] > 0.55
