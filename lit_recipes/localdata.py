"""Where local data sets live: one environment variable, ``LIT_RECIPES_DATA``.

``LIT_RECIPES_DATA`` names either the CIFAR-10 JPEG tarball itself (``cifar10-jpeg.tar.gz``, the
ImageFolder layout ``cifar10-jpeg/{train,test}/<class>/*.jpg``), a folder holding that tarball, or a
folder holding the unpacked ``cifar10-jpeg/`` tree. Tests, notebooks and benchmarks that need real
images reach them only through this module; without the variable they skip (tests) or stop with one
line saying what to set (notebooks, benchmarks).

Example:
    >>> import os
    >>> from lit_recipes.localdata import DataNotFound, cifar10_jpeg_subset
    >>> try:
    ...     root = cifar10_jpeg_subset(per_class_train=20, per_class_test=5)  # cached under ~/.cache
    ... except DataNotFound as err:
    ...     print(err)  # doctest: +SKIP
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tarfile
import tempfile
from collections.abc import Sequence
from pathlib import Path

DATA_ENV = "LIT_RECIPES_DATA"
TARBALL_NAME = "cifar10-jpeg.tar.gz"
TREE_NAME = "cifar10-jpeg"
CACHE_ENV = "LIT_RECIPES_CACHE"


class DataNotFound(FileNotFoundError):
    """The local data set is not where ``LIT_RECIPES_DATA`` says (or the variable is unset)."""


def data_variable() -> str | None:
    """The value of ``LIT_RECIPES_DATA`` (``None`` when unset or empty)."""
    value = os.environ.get(DATA_ENV, "").strip()
    return value or None


def cache_dir() -> Path:
    """Where unpacked subsets are kept (``LIT_RECIPES_CACHE`` or ``~/.cache/lit_recipes``)."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "lit_recipes")


def cifar10_jpeg_source() -> Path:
    """The CIFAR-10 JPEG tarball or unpacked tree that ``LIT_RECIPES_DATA`` points at.

    Raises:
        DataNotFound: the variable is unset, or names nothing that holds the data set.
    """
    value = data_variable()
    if value is None:
        raise DataNotFound(
            f"{DATA_ENV} is not set: point it at {TARBALL_NAME} (CIFAR-10 as JPEGs, ImageFolder layout) "
            "or at a folder holding it or its unpacked cifar10-jpeg/ tree"
        )
    path = Path(value).expanduser()
    candidates = [path] if path.is_file() else [path / TARBALL_NAME, path / TREE_NAME, path]
    for cand in candidates:
        if cand.is_file() and cand.name.endswith((".tar.gz", ".tgz", ".tar")):
            return cand
        if cand.is_dir() and (cand / "train").is_dir():
            return cand
    raise DataNotFound(f"{DATA_ENV}={value} holds neither {TARBALL_NAME} nor an unpacked {TREE_NAME}/ tree")


def _copy_from_tree(src: Path, dest: Path, limits: dict[str, int], classes: set[str] | None) -> None:
    for split, limit in limits.items():
        for class_dir in sorted(p for p in (src / split).iterdir() if p.is_dir()):
            if classes is not None and class_dir.name not in classes:
                continue
            out = dest / split / class_dir.name
            out.mkdir(parents=True, exist_ok=True)
            for f in sorted(class_dir.iterdir())[:limit]:
                shutil.copyfile(f, out / f.name)


def _extract_from_tarball(src: Path, dest: Path, limits: dict[str, int], classes: set[str] | None) -> None:
    """Extract the subset; a broken archive is one :class:`~lit_recipes.errors.BadInput` naming it."""
    import zlib

    from lit_recipes.errors import BadInput

    try:
        _extract_members(src, dest, limits, classes)
    except (tarfile.TarError, EOFError, zlib.error):
        raise BadInput(
            f"cannot read the data archive (not a tar archive, or cut short): {src}",
            f"point {DATA_ENV} at a complete {TARBALL_NAME} or at its unpacked {TREE_NAME}/ folder",
        ) from None
    except OSError as err:
        if err.filename is not None:
            raise
        raise BadInput(
            f"cannot read the data archive ({err}): {src}",
            f"point {DATA_ENV} at a complete {TARBALL_NAME} or at its unpacked {TREE_NAME}/ folder",
        ) from None


def _extract_members(src: Path, dest: Path, limits: dict[str, int], classes: set[str] | None) -> None:
    taken: dict[tuple[str, str], int] = {}
    with tarfile.open(src, "r:*") as tar:
        for member in tar:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) < 3 or parts[-3] not in limits:
                continue
            split, cls = parts[-3], parts[-2]
            if classes is not None and cls not in classes:
                continue
            if taken.get((split, cls), 0) >= limits[split]:
                continue
            taken[(split, cls)] = taken.get((split, cls), 0) + 1
            out = dest / split / cls / parts[-1]
            out.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as fh:
                out.write_bytes(fh.read())


def _request_tag(limits: dict[str, int], keep: set[str] | None) -> str:
    classes = ",".join(sorted(keep)) if keep is not None else "all"
    return f"{sorted(limits.items())} {classes}\n"


def _same_request(dest: Path, limits: dict[str, int], keep: set[str] | None) -> bool:
    return (dest / ".complete").read_text() == _request_tag(limits, keep)


def cifar10_jpeg_subset(
    dest: str | os.PathLike | None = None,
    per_class_train: int = 100,
    per_class_test: int = 20,
    classes: Sequence[str] | None = None,
) -> Path:
    """An ImageFolder tree ``dest/{train,test}/<class>/*.jpg`` with the first N images per class.

    Args:
        dest: target folder; ``None`` caches it under :func:`cache_dir` by size (made once, reused).
        per_class_train: images per class from the train split (0 for none).
        per_class_test: images per class from the test split (0 for none).
        classes: keep only these class folders (all ten when ``None``).

    Returns:
        The folder holding ``train/`` (and ``test/``).

    Raises:
        DataNotFound: ``LIT_RECIPES_DATA`` is unset or wrong (the message says what to set).
    """
    src = cifar10_jpeg_source()
    limits = {k: v for k, v in (("train", per_class_train), ("test", per_class_test)) if v > 0}
    keep = set(classes) if classes is not None else None
    if dest is None:
        tag = "all" if keep is None else "-".join(sorted(keep))
        dest = cache_dir() / f"cifar10-jpeg-{per_class_train}-{per_class_test}-{tag}"
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # one builder at a time per target (parallel tests, notebooks and benchmarks share the cache)
    with open(dest.parent / f".{dest.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (dest / ".complete").is_file() and _same_request(dest, limits, keep):
            return dest
        tmp = Path(tempfile.mkdtemp(prefix=".partial-", dir=dest.parent))
        try:
            if src.is_dir():
                _copy_from_tree(src, tmp, limits, keep)
            else:
                _extract_from_tarball(src, tmp, limits, keep)
            (tmp / ".complete").write_text(_request_tag(limits, keep))
            dest.mkdir(parents=True, exist_ok=True)
            for child in tmp.iterdir():  # split folders of an earlier, partial call are replaced whole
                target = dest / child.name
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
                child.rename(target)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest
