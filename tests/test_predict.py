"""Predicting new images: export metadata, load_exported without Lightning, predictions.csv."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["cat", "dog", "red fox"]  # "red fox": a name that needs sanitising in metric names


def _write_jpegs(root: Path, per_class: int, size: int, seed: int) -> list[Path]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    files = []
    for c, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 80, size=(size, size, 3), dtype=np.uint8)
            img[..., c] += 150  # each class has its own dominant channel
            path = root / name / f"{name.replace(' ', '_')}_{i}.jpg"
            Image.fromarray(img).save(path, quality=90)
            files.append(path)
    return files


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A LeNet trained for a few steps on a 3-class JPEG folder (16x16), its checkpoint and export."""
    import lightning as L

    from lit_recipes.commands.export import export_model
    from lit_recipes.datamodules import ImageFolderDataModule
    from lit_recipes.module import ClassifierModule

    tmp = tmp_path_factory.mktemp("predict")
    _write_jpegs(tmp / "train", per_class=8, size=16, seed=0)
    dm = ImageFolderDataModule(str(tmp / "train"), batch_size=8, val_fraction=0.25, train_transforms=[])
    module = ClassifierModule("lenet5", num_classes=3, in_channels=3, lr=0.05)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=str(tmp),
    )
    trainer.fit(module, datamodule=dm)
    ckpt = tmp / "model.ckpt"
    trainer.save_checkpoint(ckpt)
    export_model(ckpt, tmp / "export")
    # new images of another size (20x20: resized to the training size on both paths)
    new_files = _write_jpegs(tmp / "new", per_class=2, size=20, seed=1)
    return {"tmp": tmp, "dm": dm, "module": module, "trainer": trainer, "ckpt": ckpt, "files": new_files}


def test_export_writes_class_names_normalisation_and_input_size(trained):
    spec = json.loads((trained["tmp"] / "export" / "model.json").read_text())
    dm = trained["dm"]
    assert spec["class_names"] == CLASSES
    assert spec["input_size"] == [16, 16]
    assert spec["image_mode"] == "RGB"
    assert spec["mean"] == pytest.approx(list(dm.mean)) and spec["std"] == pytest.approx(list(dm.std))
    assert spec["model"] == "lenet5" and spec["num_classes"] == 3
    assert any("resize to 16x16" in step for step in spec["eval_transform"])


def test_per_class_metrics_are_named_after_sanitised_class_names(trained):
    keys = set(trained["trainer"].callback_metrics)
    assert {"val/acc_class_cat", "val/acc_class_dog", "val/acc_class_red_fox"} <= keys
    assert not any(k.startswith("val/acc_class_0") for k in keys)


def test_class_metric_names():
    from lit_recipes.module import class_metric_names

    assert class_metric_names(["a b", "c/d", "ok"], 3) == ["a_b", "c_d", "ok"]
    assert class_metric_names(None, 3) == ["0", "1", "2"]
    assert class_metric_names(["x", "y"], 3) == ["0", "1", "2"]  # length mismatch: indices
    assert class_metric_names(["a b", "a/b", "???"], 3) == ["a_b_0", "a_b_1", "2"]  # collisions, empty


def _module_logits(trained, files) -> torch.Tensor:
    from lit_recipes.datamodules.imagefolder import read_image

    dm, module = trained["dm"], trained["module"]
    tf = dm.build_eval_transform()
    x = torch.stack([tf(read_image(f, "RGB", dm.image_hw or (16, 16))) for f in files])
    module.eval()
    with torch.inference_mode():
        return module.predict_logits(x).float()


SCRIPT = r"""
import json, sys
import torch
torch.set_num_threads(1)
import lit_recipes
from lit_recipes.commands.predict import predict_main
export, files, out_logits, csv_path = sys.argv[1:5]
files = json.loads(files)
predictor = lit_recipes.load_exported(export)
torch.save(predictor(files), out_logits)
rc = predict_main(["--images", str(__import__("pathlib").Path(files[0]).parents[1]), "--model", export, "--out", csv_path])
heavy = sorted(m for m in sys.modules if m == "lightning" or m.startswith(("lightning.", "pytorch_lightning")))
print(json.dumps({"rc": rc, "classes": predictor.class_names, "heavy": heavy}))
"""


def test_load_exported_in_fresh_process_without_lightning_gives_module_logits(trained, tmp_path):
    files = [str(f) for f in trained["files"]]
    torch.set_num_threads(1)
    expected = _module_logits(trained, files)
    out_logits, out_csv = tmp_path / "logits.pt", tmp_path / "predictions.csv"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            SCRIPT,
            str(trained["tmp"] / "export"),
            json.dumps(files),
            str(out_logits),
            str(out_csv),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["heavy"] == [], f"Lightning was imported: {result['heavy']}"
    assert result["rc"] == 0 and result["classes"] == CLASSES
    got = torch.load(out_logits, weights_only=True)
    assert torch.equal(got, expected), (got - expected).abs().max()

    rows = list(csv.DictReader(out_csv.open()))
    assert [r["file"] for r in rows] == sorted(files)
    probs = torch.softmax(expected, -1)
    for r in rows:
        i = files.index(r["file"])
        assert r["class"] == CLASSES[int(probs[i].argmax())]
        assert float(r["prob"]) == pytest.approx(float(probs[i].max()), abs=1e-4)
        assert r["label"] == Path(r["file"]).parent.name  # the folder names are class names
        assert len(r["top_k"].split("; ")) == 3
    assert "predicted 6 image(s)" in proc.stdout and "correct" in proc.stdout


def test_predict_from_checkpoint_matches_export(trained):
    from lit_recipes import load_exported
    from lit_recipes.commands.predict import load_predictor

    files = trained["files"]
    a = load_predictor(ckpt_path=str(trained["ckpt"]))(files)
    b = load_exported(trained["tmp"] / "export")(files)
    assert torch.equal(a, b)
    assert load_predictor(ckpt_path=str(trained["ckpt"])).class_names == CLASSES


def test_predict_command_line_routing_and_bad_input(trained, tmp_path):
    from lit_recipes.commands.predict import is_folder_predict, predict_main

    assert is_folder_predict(["--images", "x", "--ckpt_path", "y"])
    assert is_folder_predict(["--model=out", "--images=x"])
    assert not is_folder_predict(["--config", "digits_lenet", "--ckpt_path", "last.ckpt"])
    with pytest.raises(FileNotFoundError, match="no image files found"):
        predict_main(["--images", str(tmp_path / "nothing"), "--model", str(trained["tmp"] / "export")])
    with pytest.raises(FileNotFoundError, match="model.json"):
        predict_main(["--images", str(trained["tmp"] / "new"), "--model", str(tmp_path)])
    with pytest.raises(ValueError, match="--top_k"):
        predict_main(
            ["--images", str(trained["tmp"] / "new"), "--model", str(trained["tmp"] / "export"), "--top_k", "0"]
        )
