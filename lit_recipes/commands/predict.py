"""``lit-recipes predict --images <folder|glob|file>``: classify new images into ``predictions.csv``.

The model comes from a checkpoint (``--ckpt_path runs/.../checkpoints/last.ckpt``) or an exported
folder (``--model model_out``, written by ``lit-recipes export``). Each image is read as the
datamodule read it at evaluation time (colour mode, input size, mean/std: stored in every
checkpoint and export). The CSV has one row per image::

    file,class,prob,label,top_k
    shots/cat_01.jpg,cat,0.9412,,cat 0.9412; dog 0.0391; bird 0.0102

``label`` is the image's folder name when that is one of the classes (a labelled tree such as
``data/test/<class>/*.jpg``), and the summary then reports the accuracy.

Without ``--images`` (or ``--model``), ``lit-recipes predict`` is LightningCLI's ``predict``
subcommand, which scores the datamodule's predict split of a ``--config``.

Nothing here imports Lightning.
"""

from __future__ import annotations

import argparse
import csv
import io
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

from lit_recipes.artifacts import atomic_write
from lit_recipes.errors import BadInput, LitRecipesError, OverwriteRefused
from lit_recipes.exported import Predictor, list_images, load_exported, predictor_from_checkpoint

DEFAULT_OUT = "predictions.csv"


def is_folder_predict(argv: list[str]) -> bool:
    """Whether a ``predict`` argument list is this command's (``--images`` or ``--model``) rather
    than LightningCLI's ``predict`` subcommand."""
    return any(a in ("--images", "--model") or a.startswith(("--images=", "--model=")) for a in argv)


def load_predictor(ckpt_path: str | None = None, model_dir: str | None = None, device: str = "cpu") -> Predictor:
    """A :class:`~lit_recipes.exported.Predictor` from a checkpoint or an exported folder."""
    if (ckpt_path is None) == (model_dir is None):
        raise ValueError("predict: give exactly one of --ckpt_path (a .ckpt) and --model (an exported folder)")
    if device == "auto":
        import torch

        device = "cuda" if torch.cuda.is_available() else "cpu"
    if model_dir is not None:
        return load_exported(model_dir, device=device)
    return predictor_from_checkpoint(ckpt_path, device=device)


def folder_label(path: Path, class_names: list[str]) -> str:
    """The image's parent folder name when it is a class name, else ``""``."""
    return path.parent.name if path.parent.name in class_names else ""


def predict_files(
    predictor: Predictor, images: str | Path | list[str | Path], top_k: int = 3, batch_size: int = 64
) -> list[dict[str, Any]]:
    """One row per image file of ``images`` (folder, glob, file or a list of them): ``file``,
    ``class``, ``prob``, ``label`` and ``top_k`` (``[(name, prob), ...]``)."""
    files = list_images(images)
    rows = predictor.predict(files, top_k=top_k, batch_size=batch_size)
    for row, f in zip(rows, files):
        row["label"] = folder_label(f, predictor.class_names)
    return rows


def check_out(path: str | Path, overwrite: bool = False) -> Path:
    """Refuse an existing ``--out`` (unless ``overwrite``) or one that cannot be written, before any
    image is read: one error naming the path the user gave."""
    import tempfile

    path = Path(path)
    if path.is_dir():
        raise BadInput(f"--out is a folder, not a file: {path}", f"pass a file name, e.g. {path / DEFAULT_OUT}")
    if path.exists() and not overwrite:
        raise OverwriteRefused(f"--out exists: {path}", "pick a new file name, or pass --overwrite to replace it")
    parent = next((p for p in [path.parent, *path.parent.parents] if p.exists()), Path("."))
    if not parent.is_dir():
        raise BadInput(f"cannot write --out {path}: {parent} is a file, not a folder")
    try:  # a real probe (os.access says yes to root even on a read-only file system)
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as err:
        raise OSError(err.errno, f"cannot write --out: {err.strerror or err}", str(path)) from None
    return path


def write_csv(rows: list[dict[str, Any]], path: str | Path) -> Path:
    """Write ``predictions.csv`` (``file,class,prob,label,top_k``), atomically (an error names ``path``,
    never the temporary file)."""
    text = io.StringIO(newline="")
    writer = csv.writer(text)
    writer.writerow(["file", "class", "prob", "label", "top_k"])
    for r in rows:
        top = "; ".join(f"{name} {p:.4f}" for name, p in r["top_k"])
        writer.writerow([r["file"], r["class"], f"{r['prob']:.4f}", r.get("label", ""), top])
    data = text.getvalue().encode()
    try:
        return atomic_write(path, lambda fh: fh.write(data))
    except LitRecipesError:
        raise
    except OSError as err:
        raise OSError(err.errno, f"cannot write --out: {err.strerror or err}", str(path)) from None


def summary_lines(rows: list[dict[str, Any]], out: Path, source: str, seconds: float) -> list[str]:
    """The short console summary of a prediction run."""
    counts = Counter(r["class"] for r in rows)
    shown = ", ".join(f"{c}: {n}" for c, n in counts.most_common(8))
    more = f" (+{len(counts) - 8} more classes)" if len(counts) > 8 else ""
    lines = [f"predicted {len(rows)} image(s) with {source} in {seconds:.1f}s -> {out}"]
    lines.append(f"  images per predicted class: {shown}{more}")
    probs = sorted(rows, key=lambda r: r["prob"])
    mean = sum(r["prob"] for r in rows) / len(rows)
    lines.append(
        f"  mean top probability {mean:.3f}; least sure: {probs[0]['file']} ({probs[0]['class']} {probs[0]['prob']:.3f})"
    )
    labelled = [r for r in rows if r.get("label")]
    if labelled:
        right = sum(r["label"] == r["class"] for r in labelled)
        lines.append(
            f"  {len(labelled)} image(s) sit in a folder named after a class: "
            f"{right}/{len(labelled)} correct ({100.0 * right / len(labelled):.1f}%)"
        )
    return lines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lit-recipes predict",
        description=(
            "Classify image files into predictions.csv (file, class, prob, label, top_k). "
            "Without --images/--model this is LightningCLI's predict subcommand (see `lit-recipes predict "
            "--config X --help`)."
        ),
    )
    parser.add_argument(
        "--images", nargs="+", required=True, help="image folder(s) (searched recursively), globs or files"
    )
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--ckpt_path", help="a .ckpt written by lit-recipes fit")
    src.add_argument("--model", help="a folder written by lit-recipes export (model.pt + model.json)")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"CSV to write (default: {DEFAULT_OUT}; never replaced)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument("--top_k", type=int, default=3, help="classes listed per image (default: 3)")
    parser.add_argument("--batch_size", type=int, default=64, help="images per forward pass (default: 64)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1 or auto (default: cpu)")
    return parser


def predict_main(argv: list[str]) -> int:
    ns = build_parser().parse_args(argv)
    if ns.top_k < 1:
        raise ValueError(f"--top_k must be >= 1, got {ns.top_k}")
    if ns.batch_size < 1:
        raise ValueError(f"--batch_size must be >= 1, got {ns.batch_size}")
    check_out(ns.out, overwrite=ns.overwrite)
    start = time.perf_counter()
    predictor = load_predictor(ns.ckpt_path, ns.model, device=ns.device)
    rows = predict_files(predictor, ns.images, top_k=ns.top_k, batch_size=ns.batch_size)
    out = write_csv(rows, ns.out)
    source = f"{predictor.spec.get('model')} ({ns.ckpt_path or ns.model})"
    if not predictor.spec.get("class_names"):
        sys.stderr.write(
            "lit-recipes predict: this model has no class names or normalisation stored (an older "
            "checkpoint); classes are indices and images are not normalised\n"
        )
    sys.stdout.write("\n".join(summary_lines(rows, out, source, time.perf_counter() - start)) + "\n")
    return 0


__all__ = [
    "check_out",
    "is_folder_predict",
    "load_predictor",
    "predict_files",
    "predict_main",
    "summary_lines",
    "write_csv",
]
