"""Bad input and faults, command by command: one line (plus at most one hint), rc != 0, nothing overwritten.

`CASES` is the table: add a row for every new command and every new way to get it wrong. Each row
runs `lit-recipes ARGS` in this process (from an empty folder) and checks that stderr holds exactly
one `lit-recipes: error:` line containing the expected text, at most one hint line right after it,
no traceback, and that no empty run folder is left behind.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import pytest
import torch
from conftest import TINY, one_step_checkpoint

from lit_recipes.errors import CheckpointError, run_command, shorten_parser_error

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "lit_recipes" / "configs" / "digits_lenet.yaml")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A real Lightning checkpoint of lenet5_bn on digits, and the broken variants of it."""
    tmp = tmp_path_factory.mktemp("bad_input")
    (tmp / "tiny.yaml").write_text(TINY)
    good = one_step_checkpoint(tmp / "good.ckpt")
    raw = good.read_bytes()
    (tmp / "truncated.ckpt").write_bytes(raw[: len(raw) // 3])
    (tmp / "empty.ckpt").write_bytes(b"")
    ckpt = torch.load(good, weights_only=True)
    ckpt["state_dict"]["model.classifier.weight"] = torch.zeros(
        7, ckpt["state_dict"]["model.classifier.weight"].shape[1]
    )
    torch.save(ckpt, tmp / "shapes.ckpt")
    std0 = torch.load(good, weights_only=True)
    std0["lit_recipes_data"]["std"] = [0.0]  # the data's normalisation, as the checkpoint carries it
    torch.save(std0, tmp / "std0.ckpt")
    (tmp / "export").mkdir()
    torch.save({k.removeprefix("model."): v for k, v in ckpt["state_dict"].items()}, tmp / "export" / "model.pt")
    (tmp / "export" / "model.json").write_text("{}")
    (tmp / "metrics.json").write_text("{}")
    (tmp / "bad.yaml").write_text("model:\n  init_args:\n    lr: [1, 2\n")
    (tmp / "a_file").write_text("x")
    (tmp / "full").mkdir()
    (tmp / "full" / "model.pt").write_text("keep me")
    _exports(tmp)
    _images(tmp)
    return tmp


# exported-model faults: (folder, change to model.json); each folder is a copy of a genuine export
SPEC_FAULTS = {
    "exp_std0": {"std": [0.0]},
    "exp_meanlen": {"mean": [0.5, 0.5, 0.5]},
    "exp_channels": {"in_channels": 0},
    "exp_mode": {"image_mode": "CMYK"},
    "exp_model": {"model": "resnet1000"},
    "exp_kwargs": {"model_kwargs": {"bogus": 1}},
    "exp_tv": {"model": "tv:resnet18", "model_kwargs": {"weights": "DEFAULT"}},
}


def _exports(tmp: Path) -> None:
    from lit_recipes.commands.export import export_model

    export_model(tmp / "good.ckpt", tmp / "exp_good")
    spec = json.loads((tmp / "exp_good" / "model.json").read_text())
    for name, change in SPEC_FAULTS.items():
        shutil.copytree(tmp / "exp_good", tmp / name)
        (tmp / name / "model.json").write_text(json.dumps({**spec, **change}))
    shutil.copytree(tmp / "exp_good", tmp / "exp_trunc")
    raw = (tmp / "exp_good" / "model.pt").read_bytes()
    (tmp / "exp_trunc" / "model.pt").write_bytes(raw[: len(raw) // 2])
    shutil.copytree(tmp / "exp_good", tmp / "exp_json")
    (tmp / "exp_json" / "model.json").write_text('{"model": "lenet5_bn", ')
    (tmp / "existing.csv").write_text("file,class\nkeep,me\n")


def _images(tmp: Path) -> None:
    import numpy as np
    from PIL import Image

    (tmp / "imgs" / "a").mkdir(parents=True)
    Image.fromarray(np.full((8, 8), 90, np.uint8)).save(tmp / "imgs" / "a" / "0.png")
    (tmp / "bomb").mkdir()
    Image.new("1", (20000, 10000)).save(tmp / "bomb" / "bomb.png")  # 200 Mpx in ~25 KB: PIL's limit is 179 Mpx


def _args(args: list[str], files: Path) -> list[str]:
    return [a.replace("{F}", str(files)).replace("{CONFIG}", CONFIG) for a in args]


# (id, argv with {F} = the files folder, text the error line must contain)
CASES = [
    # fit / validate / test: the config parser
    ("unknown-model-arg", ["fit", "--config", "{CONFIG}", "--model.init_args.lrr=0.1"], "model.init_args.lrr"),
    ("unknown-option", ["fit", "--config", "{CONFIG}", "--trainer.max_epochz=3"], "--trainer.max_epochz=3"),
    ("wrong-type", ["fit", "--config", "{F}/tiny.yaml", "--trainer.max_epochs=x"], "trainer.max_epochs"),
    ("negative-epochs", ["fit", "--config", "{F}/tiny.yaml", "--trainer.max_epochs", "-5"], "max_epochs"),
    ("yaml-syntax", ["fit", "--config", "{F}/bad.yaml"], "{F}/bad.yaml"),
    ("missing-config", ["fit", "--config", "{F}/nope.yaml"], "nope.yaml"),
    ("unknown-model", ["fit", "--config", "{F}/tiny.yaml", "--model.init_args.model=resnet1000"], "resnet1000"),
    ("lr-zero", ["fit", "--config", "{F}/tiny.yaml", "--model.init_args.lr=0"], "lr must be a positive number"),
    # never substitute
    (
        "num-classes-conflict",
        ["fit", "--config", "{F}/tiny.yaml", "--model.init_args.num_classes=5"],
        "num_classes is 5 but the data has 10",
    ),
    (
        "root-under-file",
        ["fit", "--config", "{F}/tiny.yaml", "--trainer.default_root_dir={F}/a_file/runs"],
        "{F}/a_file",
    ),
    # checkpoints
    ("ckpt-missing", ["test", "--config", "{F}/tiny.yaml", "--ckpt_path={F}/nope.ckpt"], "checkpoint not found"),
    ("ckpt-folder", ["test", "--config", "{F}/tiny.yaml", "--ckpt_path={F}"], "is a folder"),
    ("ckpt-exported", ["test", "--config", "{F}/tiny.yaml", "--ckpt_path={F}/export/model.pt"], "plain state_dict"),
    ("ckpt-json", ["test", "--config", "{F}/tiny.yaml", "--ckpt_path={F}/metrics.json"], "JSON file"),
    ("ckpt-empty", ["test", "--config", "{F}/tiny.yaml", "--ckpt_path={F}/empty.ckpt"], "empty"),
    ("ckpt-truncated", ["test", "--config", "{F}/tiny.yaml", "--ckpt_path={F}/truncated.ckpt"], "truncated or corrupt"),
    ("fit-ckpt-truncated", ["fit", "--config", "{F}/tiny.yaml", "--ckpt_path={F}/truncated.ckpt"], "truncated"),
    (
        "ckpt-architecture",
        ["test", "--config", "{F}/tiny.yaml", "--model.init_args.model=lenet5", "--ckpt_path={F}/good.ckpt"],
        "holds lenet5_bn",
    ),
    (
        "fit-ckpt-architecture",
        ["fit", "--config", "{F}/tiny.yaml", "--model.init_args.model=lenet5", "--ckpt_path={F}/good.ckpt"],
        "the config builds lenet5",
    ),
    ("validate-ckpt-missing", ["validate", "--config", "{F}/tiny.yaml", "--ckpt_path={F}/x.ckpt"], "not found"),
    (
        "ckpt-shapes",
        ["test", "--config", "{F}/tiny.yaml", "--ckpt_path={F}/shapes.ckpt"],
        "model.classifier.weight has shape [7, 84]",
    ),
    # export
    ("export-missing", ["export", "{F}/nope.ckpt", "{F}/out1"], "checkpoint not found"),
    ("export-truncated", ["export", "{F}/truncated.ckpt", "{F}/out2/sub"], "truncated or corrupt"),
    ("export-exported", ["export", "{F}/export/model.pt", "{F}/out3"], "plain state_dict"),
    ("export-not-empty", ["export", "{F}/good.ckpt", "{F}/full"], "export target is not empty"),
    ("export-onto-file", ["export", "{F}/good.ckpt", "{F}/a_file"], "is a file"),
    # the recipe commands
    ("lr-find-no-config", ["lr-find"], "lr-find needs --config"),
    ("sanity-missing-config", ["sanity", "--config", "{F}/nope.yaml"], "nope.yaml"),
    ("sanity-unknown-option", ["sanity", "--config", "{F}/tiny.yaml", "--model.init_args.lrr=1"], "lrr"),
    ("kfold-report-no-run", ["kfold-report", "{F}"], "not a k-fold run directory"),
    ("kfold-bad-folds", ["kfold", "--config", "{F}/tiny.yaml", "--kfold.num_folds=1"], "num_folds"),
    # an export's model.json: every field checked on load, the key named
    *[
        (f"predict-{name}", ["predict", "--images", "{F}/imgs", "--model", f"{{F}}/{name}"], f"key {key!r}")
        for name, key in [
            ("exp_std0", "std"),
            ("exp_meanlen", "mean"),
            ("exp_channels", "in_channels"),
            ("exp_mode", "image_mode"),
            ("exp_model", "model"),
            ("exp_kwargs", "model_kwargs"),
        ]
    ],
    ("export-std-zero", ["export", "{F}/std0.ckpt", "{F}/out1"], "key 'std'"),
    ("predict-ckpt-std-zero", ["predict", "--images", "{F}/imgs", "--ckpt_path", "{F}/std0.ckpt"], "key 'std'"),
    ("predict-tv-no-download", ["predict", "--images", "{F}/imgs", "--model", "{F}/exp_tv"], "do not fit tv:resnet18"),
    ("predict-model-pt-truncated", ["predict", "--images", "{F}/imgs", "--model", "{F}/exp_trunc"], "truncated"),
    ("predict-model-json-broken", ["predict", "--images", "{F}/imgs", "--model", "{F}/exp_json"], "not valid JSON"),
    # predict: never overwrite, name the user's path, the checkpoint checks of fit/test/export
    (
        "predict-out-exists",
        ["predict", "--images", "{F}/imgs", "--model", "{F}/exp_good", "--out", "{F}/existing.csv"],
        "--out exists: {F}/existing.csv",
    ),
    (
        "predict-out-unwritable",
        ["predict", "--images", "{F}/imgs", "--model", "{F}/exp_good", "--out", "/proc/predictions.csv"],
        "(/proc/predictions.csv)",
    ),
    (
        "predict-out-checked-first",  # before the model is loaded or any image is looked for
        ["predict", "--images", "{F}/no_images", "--model", "{F}/no_model", "--out", "/proc/predictions.csv"],
        "cannot write --out: ",
    ),
    (
        "predict-out-under-file",
        ["predict", "--images", "{F}/imgs", "--model", "{F}/exp_good", "--out", "{F}/a_file/p.csv"],
        "{F}/a_file is a file",
    ),
    (
        "predict-ckpt-export-folder",
        ["predict", "--images", "{F}/imgs", "--ckpt_path", "{F}/exp_good"],
        "{F}/exp_good is an exported model folder",
    ),
    (
        "test-ckpt-export-folder",
        ["test", "--config", "{F}/tiny.yaml", "--ckpt_path={F}/exp_good"],
        "is an exported model folder",
    ),
    ("predict-ckpt-truncated", ["predict", "--images", "{F}/imgs", "--ckpt_path", "{F}/truncated.ckpt"], "truncated"),
    ("predict-ckpt-missing", ["predict", "--images", "{F}/imgs", "--ckpt_path", "{F}/nope.ckpt"], "not found"),
    # images: a decompression bomb is one line naming the file
    (
        "predict-decompression-bomb",
        ["predict", "--images", "{F}/bomb", "--model", "{F}/exp_good"],
        "too large to decode safely",
    ),
]


def _call(argv: list[str], capsys) -> tuple[int, str, str]:
    from lit_recipes.commands.main import main
    from lit_recipes.entry import main as entry_main

    if argv[0] == "predict" and "--images" in argv:  # the console script sends these to predict_main
        main = entry_main
    capsys.readouterr()
    try:
        code = main(list(argv))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def _assert_one_line(err: str, expected: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.startswith("lit-recipes: ")]
    errors = [ln for ln in lines if ln.startswith("lit-recipes: error: ")]
    assert len(errors) == 1, err[-3000:]
    assert expected in errors[0], errors[0]
    hints = [ln for ln in lines if ln.startswith("lit-recipes: hint: ")]
    assert len(hints) <= 1 and len(lines) == 1 + len(hints), err[-3000:]
    assert "Traceback" not in err and "Given value type" not in err and "usage:" not in err
    return errors[0]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line(case, files, tmp_path, capsys, monkeypatch):
    _, argv, expected = case
    monkeypatch.chdir(tmp_path)  # a failed command leaves nothing behind, not even an empty run folder
    monkeypatch.setenv("WANDB_MODE", "disabled")
    before = {p: p.stat().st_mtime_ns for p in files.rglob("*") if p.is_file()}
    code, _, err = _call(_args(argv, files), capsys)
    assert code == 2, err[-3000:]
    _assert_one_line(err, expected.replace("{F}", str(files)))
    assert list(tmp_path.iterdir()) == [], list(tmp_path.rglob("*"))
    after = {p: p.stat().st_mtime_ns for p in files.rglob("*") if p.is_file()}
    assert after == before  # nothing written over, nothing created
    assert not any((files / d).exists() for d in ("out1", "out2", "out3"))


def test_export_overwrite_is_explicit(files, tmp_path, capsys):
    target = tmp_path / "full"
    shutil.copytree(files / "full", target)
    code, out, err = _call(["export", str(files / "good.ckpt"), str(target), "--overwrite"], capsys)
    assert code == 0, err
    assert json.loads((target / "model.json").read_text())["model"] == "lenet5_bn"


def test_wandb_online_without_key_is_one_line(files, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for key in [k for k in os.environ if k.startswith("WANDB_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("WANDB_MODE", "online")
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    cfg = (files / "tiny.yaml").read_text().replace("  logger: false\n", "")
    (tmp_path / "online.yaml").write_text(cfg)
    code, _, err = _call(["fit", "--config", str(tmp_path / "online.yaml")], capsys)
    assert code == 2
    line = _assert_one_line(err, "WANDB_MODE=online but no W&B API key")
    assert line and "wandb login" in err and "WANDB_MODE=offline" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["home", "online.yaml"] or sorted(
        p.name for p in tmp_path.iterdir()
    ) == ["online.yaml"]


def test_wandb_key_without_network_goes_offline(tmp_path, monkeypatch):
    from lit_recipes import tracking

    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # nothing listens there: refused at once
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    assert tracking.ensure_wandb_mode(tmp_path) == "offline"
    assert os.environ["WANDB_MODE"] == "offline"


def test_wandb_probe_gives_up_on_a_silent_host(monkeypatch):
    """A connection (or name lookup) that never answers is given up after the probe's timeout."""
    import socket
    import threading

    from lit_recipes import tracking

    release = threading.Event()

    def hang(*args, **kwargs):
        release.wait(30)
        raise OSError("released")

    monkeypatch.setattr(socket, "create_connection", hang)
    try:
        ok, why = tracking.wandb_reachable(timeout=0.2)
    finally:
        release.set()
    assert not ok and why == "no answer in 0.2 s"


def test_unexpected_error_is_one_line_and_debug_shows_the_traceback(capsys, monkeypatch):
    def boom(argv):
        raise RuntimeError("something broke\ninside")

    monkeypatch.delenv("LIT_RECIPES_DEBUG", raising=False)
    assert run_command(boom, []) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[0] == "lit-recipes: error: unexpected RuntimeError: something broke inside"
    assert "--debug" in err.splitlines()[1] and "Traceback" not in err and len(err.splitlines()) == 2
    with pytest.raises(RuntimeError):
        run_command(boom, ["--debug"])
    monkeypatch.delenv("LIT_RECIPES_DEBUG")
    monkeypatch.setenv("LIT_RECIPES_DEBUG", "1")
    with pytest.raises(RuntimeError):
        run_command(boom, [])


def test_known_error_keeps_its_hint(capsys, monkeypatch):
    monkeypatch.delenv("LIT_RECIPES_DEBUG", raising=False)

    def bad(argv):
        raise CheckpointError("checkpoint not found: x.ckpt", "pass the .ckpt file")

    assert run_command(bad, []) == 2
    assert capsys.readouterr().err.splitlines() == [
        "lit-recipes: error: checkpoint not found: x.ckpt",
        "lit-recipes: hint: pass the .ckpt file",
    ]


def test_parser_errors_are_shortened_to_the_key():
    message = (
        'Parser key "data":\n  Does not validate against any of the Union subtypes\n'
        "  Subtypes: [<class 'lit_recipes.datamodules.base.ClassificationDataModule'>, <class 'NoneType'>]\n"
        "  Errors:\n    - Problem with given class_path 'lit_recipes.datamodules.DigitsDataModule':\n"
        "        Parser key \"batch_size\":\n          Expected a <class 'int'>. Got value: abc\n"
        "    - Expected a <class 'NoneType'>\n  Given value type: <class 'jsonargparse._util.NestedArg'>\n"
        "  Given value: NestedArg(key='batch_size', val='abc')"
    )
    assert shorten_parser_error(message) == ("data.init_args.batch_size: expected int. Got value: abc", None)
    # a callback's own check raised while the list of callbacks was instantiated: its message, not the config dump
    message = (
        "Does not validate against any of the Union subtypes\nSubtypes: [list[lightning.pytorch.callbacks.callback"
        ".Callback], <class 'NoneType'>]\nErrors:\n  - fraction must be in (0, 1], got 0.0\n  - Not a valid "
        "subclass of Callback\n  - Expected a <class 'NoneType'>\nGiven value type: <class 'list'>\nGiven value: "
        "[Namespace(class_path='lit_recipes.callbacks.HardNegativeMining', init_args=Namespace(fraction=0.0))]"
    )
    assert shorten_parser_error(message) == ("fraction must be in (0, 1], got 0.0", None)
    # an appended callback's Literal argument with a wrong value: the named class's error (key and value),
    # not the base Callback's "Option 'draw' is not accepted" (which said "Callback has no argument 'draw'")
    message = (
        'Parser key "trainer.callbacks":\n  Does not validate against any of the Union subtypes\n  Subtypes: '
        "[list[lightning.pytorch.callbacks.callback.Callback], <class 'lightning.pytorch.callbacks.callback.Callback'>"
        ", <class 'NoneType'>]\n  Errors:\n    - Problem with given class_path 'lit_recipes.callbacks.HardNegativeMining'"
        ":\n        Parser key \"draw\":\n          Expected a typing.Literal['top', 'proportional']. Got value: "
        "softmax\n    - Problem with given class_path 'lightning.Callback':\n        Option 'draw' is not accepted\n"
        "    - Expected a <class 'NoneType'>\n  Given value type: <class 'jsonargparse._util.NestedArg'>\n"
        "  Given value: NestedArg(key='draw', val='softmax')"
    )
    assert shorten_parser_error(message) == (
        "trainer.callbacks.init_args.draw: expected typing.Literal['top', 'proportional']. Got value: softmax",
        None,
    )
    # only the base class was tried (a misspelt argument): that one says so, with a close match
    message = message.replace("HardNegativeMining':\n        Parser key \"draw\":\n          Expected a typing.Literal"
                              "['top', 'proportional']. Got value: softmax", "HardNegativeMining':\n        Option "
                              "'draw' is not accepted")  # fmt: skip
    assert (
        shorten_parser_error(message)[0]
        == "trainer.callbacks.init_args.draw: HardNegativeMining has no argument 'draw'"
    )
    # a nested class inside the named one keeps its own (deeper) error and key
    nested = (
        "Parser key \"model\":\n  Errors:\n    - Problem with given class_path 'lit_recipes.module.ClassifierModule':\n"
        '        Parser key "lr_scheduler":\n          Errors:\n            - Problem with given class_path '
        "'torch.optim.lr_scheduler.StepLR':\n                Parser key \"step_size\":\n                  Expected "
        "a <class 'int'>. Got value: x\n    - Problem with given class_path 'lightning.LightningModule':\n"
        "        Option 'lr_scheduler' is not accepted\n"
    )
    text = shorten_parser_error(nested)[0]
    assert text.startswith("model.init_args.lr_scheduler.init_args.step_size: expected int. Got value: x"), text
    text, hint = shorten_parser_error("unrecognized arguments: --trainer.max_epochz=3", ["--trainer.max_epochs"])
    assert text == "unknown option --trainer.max_epochz=3" and hint == "did you mean --trainer.max_epochs?"


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_artifacts_follow_the_umask(tmp_path, mask):
    from lit_recipes.artifacts import save_json

    old = os.umask(mask)
    try:
        path = save_json(tmp_path / "x.json", {"a": 1})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~mask


def test_test_fraction_comes_from_the_chosen_datamodule(tmp_path):
    """ImageFolderDataModule's own default (0.0), not the digits default (0.2) carried over by the parser."""
    from PIL import Image

    from lit_recipes.commands.fit import build_cli

    for cls in ("a", "b"):
        (tmp_path / "imgs" / cls).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (8, 8), (i * 40, 0, 0)).save(tmp_path / "imgs" / cls / f"{i}.png")
    base = ["--trainer.logger=false", f"--trainer.default_root_dir={tmp_path}"]
    data = ["--data=lit_recipes.datamodules.ImageFolderDataModule", f"--data.root={tmp_path / 'imgs'}"]
    cli = build_cli([*data, "--data.val_fraction=0.5", *base])
    assert cli.datamodule.test_fraction == 0.0
    assert build_cli(base).datamodule.test_fraction == 0.2  # the digits default stays the digits default


def test_predict_overwrite_is_explicit(files, tmp_path, capsys):
    out = tmp_path / "existing.csv"
    shutil.copyfile(files / "existing.csv", out)
    argv = ["predict", "--images", str(files / "imgs"), "--model", str(files / "exp_good"), "--out", str(out)]
    code, _, err = _call(argv, capsys)
    assert code == 2 and out.read_text() == (files / "existing.csv").read_text()
    code, _, err = _call([*argv, "--overwrite"], capsys)
    assert code == 0, err
    assert out.read_text().splitlines()[0] == "file,class,prob,label,top_k" and len(out.read_text().splitlines()) == 2


def test_16bit_images_are_scaled_to_8_bits_not_clipped(tmp_path):
    """A 16-bit grey PNG decodes to round(v * 255 / 65535) in both the datamodules' decoder and the
    exported predictor (Pillow's own convert("L") clips it: almost every pixel would be 255)."""
    import numpy as np
    from PIL import Image

    from lit_recipes import load_exported
    from lit_recipes.datamodules.imagefolder import read_image as folder_read
    from lit_recipes.imageio import read_image

    wide = (np.arange(32 * 32, dtype=np.int64).reshape(32, 32) * 64).astype(np.uint16)  # 0 .. 65472
    Image.fromarray(wide).save(tmp_path / "wide.png")
    assert Image.open(tmp_path / "wide.png").mode.startswith("I")  # really a 16-bit file
    expected = ((wide.astype(np.int64) * 255 + 32767) // 65535).astype(np.uint8)
    assert expected.max() == 255 and (expected == 255).mean() < 0.01
    assert np.array_equal(read_image(tmp_path / "wide.png", "L", None)[..., 0], expected)
    assert np.array_equal(folder_read(tmp_path / "wide.png", "L")[..., 0], expected)
    assert np.array_equal(read_image(tmp_path / "wide.png", "RGB", None), np.repeat(expected[..., None], 3, axis=2))
    Image.fromarray(expected).save(tmp_path / "narrow.png")
    predictor = load_exported(files_export(tmp_path))
    assert torch.equal(predictor.batch([tmp_path / "wide.png"]), predictor.batch([tmp_path / "narrow.png"]))


def files_export(tmp_path: Path) -> Path:
    """A small genuine export (random lenet5_bn weights) for the tests that need one of their own."""
    from lit_recipes.artifacts import save_json
    from lit_recipes.models import create_model

    out = tmp_path / "export"
    out.mkdir()
    net = create_model("lenet5_bn", num_classes=10, in_channels=1)
    torch.save(net.state_dict(), out / "model.pt")
    spec = {"model": "lenet5_bn", "num_classes": 10, "in_channels": 1, "image_mode": "L", "input_size": [32, 32]}
    save_json(out / "model.json", {**spec, "mean": [0.5], "std": [0.25]})
    return out


def test_a_torchvision_export_loads_without_downloading_its_weights(tmp_path, monkeypatch):
    """``weights: DEFAULT`` in an export's model_kwargs does not trigger a download at load time: the
    exported weights are the ones used."""
    import torchvision

    from lit_recipes import load_exported
    from lit_recipes.models import create_model

    def no_download(*args, **kwargs):
        raise AssertionError("a weight download was attempted")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", no_download)
    monkeypatch.setattr(torchvision.models._api.WeightsEnum, "get_state_dict", no_download)
    net = create_model("tv:mobilenet_v3_small", num_classes=3, in_channels=3)
    (tmp_path / "tv").mkdir()
    torch.save(net.state_dict(), tmp_path / "tv" / "model.pt")
    spec = {
        "model": "tv:mobilenet_v3_small",
        "num_classes": 3,
        "in_channels": 3,
        "model_kwargs": {"weights": "DEFAULT"},
    }
    (tmp_path / "tv" / "model.json").write_text(json.dumps(spec))
    predictor = load_exported(tmp_path / "tv")
    for key, value in net.state_dict().items():
        assert torch.equal(predictor.net.state_dict()[key], value), key


def test_a_broken_data_archive_names_the_file(tmp_path, monkeypatch):
    """The Python API: a LIT_RECIPES_DATA tarball that is not one is BadInput naming it (not a raw
    tarfile.ReadError)."""
    from lit_recipes.errors import BadInput
    from lit_recipes.localdata import cifar10_jpeg_subset

    archive = tmp_path / "cifar10-jpeg.tar.gz"
    archive.write_bytes(b"not a tar archive\n" * 100)
    monkeypatch.setenv("LIT_RECIPES_DATA", str(archive))
    monkeypatch.setenv("LIT_RECIPES_CACHE", str(tmp_path / "cache"))
    with pytest.raises(BadInput, match=f"cannot read the data archive .*: {archive}$"):
        cifar10_jpeg_subset(per_class_train=1, per_class_test=1)
