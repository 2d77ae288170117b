"""``wikipedia``: the UCSD SVCL Wikipedia image-text set (not shipped; loaded from a local copy)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from commonspace.data.builtin._common import DatasetUnavailable, Info, carve, find_shared
from commonspace.data.dataset import DataError, MultimodalDataset

ENV = "COMMONSPACE_WIKIPEDIA"
FILES = ("raw_features.mat", "trainset_txt_img_cat.list", "testset_txt_img_cat.list", "categories.list")
N_TRAIN, N_TEST = 2173, 693


def _has_files(d: Path) -> bool:
    return all((d / f).is_file() for f in FILES)


def locate(root: str | os.PathLike | None = None) -> Path | None:
    """The folder with the Wikipedia files: ``root``, else ``$COMMONSPACE_WIKIPEDIA``, else shared/data."""
    if root is not None:
        r = Path(root).expanduser()
        for d in (r, r / "wikipedia"):  # accept the data folder itself or its parent
            if _has_files(d):
                return d
        return None
    env = os.environ.get(ENV)
    if env:
        d = Path(env).expanduser()
        return d if _has_files(d) else None
    d = find_shared("wikipedia")
    return d if d is not None and _has_files(d) else None


def _unavailable(where: str) -> DatasetUnavailable:
    return DatasetUnavailable(
        f"the Wikipedia dataset was not found {where}. It is not shipped with commonspace because it may not "
        "be redistributed: get it from UCSD SVCL (Rasiwasia et al., 'A new approach to cross-modal "
        "multimedia retrieval', ACM MM 2010; http://www.svcl.ucsd.edu/projects/crossmodal/), then put "
        f"{', '.join(FILES)} in one folder and pass root=<folder>, or set {ENV}=<folder>, or place it at "
        "shared/data/wikipedia next to your project"
    )


def _labels(path: Path) -> np.ndarray:
    rows = [ln.split("\t") for ln in path.read_text().splitlines() if ln.strip()]
    try:
        return np.array([int(r[2]) for r in rows], dtype=np.int64) - 1  # classes 1..10 -> 0..9
    except (IndexError, ValueError) as exc:
        raise DataError(f"{path}: expected 'text_id<TAB>image_id<TAB>class' lines ({exc})") from exc


def load_wikipedia(root: str | os.PathLike | None = None) -> MultimodalDataset:
    """``image`` SIFT-128 histograms and ``text`` LDA-10 topics; standard 2173/693 split, val from train."""
    d = locate(root)
    if d is None:
        where = f"in {root}" if root is not None else (
            f"in ${ENV}={os.environ[ENV]}" if os.environ.get(ENV) else "in any shared/data/wikipedia folder")
        raise _unavailable(where)
    from commonspace.data.io import load_mat

    mat = d / "raw_features.mat"
    i_tr, i_te, t_tr, t_te = (load_mat(mat, k) for k in ("I_tr", "I_te", "T_tr", "T_te"))
    y_tr, y_te = _labels(d / "trainset_txt_img_cat.list"), _labels(d / "testset_txt_img_cat.list")
    shapes = (i_tr.shape, t_tr.shape, y_tr.shape, i_te.shape, t_te.shape, y_te.shape)
    want = ((N_TRAIN, 128), (N_TRAIN, 10), (N_TRAIN,), (N_TEST, 128), (N_TEST, 10), (N_TEST,))
    if shapes != want:
        raise DataError(f"{d}: unexpected shapes {shapes}; expected {want} (the standard Wikipedia release)")
    names = [s.strip() for s in (d / "categories.list").read_text().splitlines() if s.strip()]
    y = np.concatenate([y_tr, y_te])
    part = carve(y_tr, {"train": 0.9, "val": 0.1})
    splits = {"train": part["train"], "val": part["val"], "test": np.arange(N_TRAIN, N_TRAIN + N_TEST)}
    meta = INFO.meta() | {"path": str(d)}
    return MultimodalDataset({"image": np.vstack([i_tr, i_te]), "text": np.vstack([t_tr, t_te])}, None, y,
                             splits, INFO.name, names, meta)


INFO = Info(
    name="wikipedia",
    description="Wikipedia featured articles: image SIFT bag-of-words (128) + text LDA topics (10), "
                "10 classes",
    loader=load_wikipedia,
    samples=N_TRAIN + N_TEST,
    modalities={"image": 128, "text": 10},
    classes=10,
    splits={"train": 1956, "val": 217, "test": N_TEST},
    split_protocol="standard 2173 train / 693 test; val = stratified 10% of train, seed 0",
    source="UCSD SVCL Wikipedia cross-modal dataset (http://www.svcl.ucsd.edu/projects/crossmodal/); "
           "not shipped, needs a local copy",
    license="research use only, not redistributable (UCSD SVCL)",
    citation="N. Rasiwasia, J. Costa Pereira, E. Coviello, G. Doyle, G. Lanckriet, R. Levy, N. Vasconcelos. "
             "A new approach to cross-modal multimedia retrieval. ACM Multimedia 2010",
    external=True,
    needs=f"a local copy: root=<folder>, ${ENV} or shared/data/wikipedia",
    locate=locate,
    options={"root": f"folder with {', '.join(FILES)}"},
)
