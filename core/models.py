"""Loading models: the bundled demo model, a local folder, a hub id, or a tiny model in code.

``trust_remote_code`` stays off unless the caller opts in; safetensors are preferred.
Hub failures become :class:`ModelLoadError` with a message that says what happened.

Local folders: with ``COMPRESSLAB_AUTH=none`` (one person on their own machine) any
folder loads; in the team modes (any other value) only folders under the model roots
(``COMPRESSLAB_MODEL_ROOTS``, ``os.pathsep``-separated; default: the data folder and the
bundled models in ``core/zoo``), compared after ``realpath`` so that symlinks and ``..``
cannot escape. A refused folder gets one message whether or not it exists.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from core import hub
from core.errors import ModelLoadError
from core.paths import data_dir

log = logging.getLogger(__name__)

ZOO_DIR = Path(__file__).resolve().parent / "zoo"  # the bundled models
DEMO_DIR = ZOO_DIR / "demo"
# Bundled models by name: the demo model, and demo-long for KV-cache experiments
# (trained at 1,024 tokens with a start token; core/zoo/train_long.py)
BUNDLED: dict[str, Path] = {"demo": DEMO_DIR, "demo-long": ZOO_DIR / "demo-long"}
AUTH_ENV = "COMPRESSLAB_AUTH"  # none | password | proxy (read here, set up elsewhere)
ROOTS_ENV = "COMPRESSLAB_MODEL_ROOTS"
FOLDER_PREFIXES = ("/", "./", "../", "~", ".\\", "..\\")  # a path, never a hub id
# A hub id: "name" or "org/name" of letters, digits, "-", "_", "."; no "--" or "..".
HUB_ID_RE = re.compile(r"^(?:[A-Za-z0-9][\w.-]{0,95}/)?[A-Za-z0-9][\w.-]{0,95}$", re.ASCII)
HUB_ID_MAX = 96
TINY_RANDOM = "tiny-random"  # a Llama built in code with random weights (tests, smoke runs)

# Presets the UI offers: id -> (parameters, short note).
PRESETS: dict[str, tuple[int, str]] = {
    "gpt2": (124_000_000, "GPT-2 small, learned positions, Conv1D layers"),
    "facebook/opt-125m": (125_000_000, "OPT, ReLU MLP, LayerNorm"),
    "EleutherAI/pythia-70m": (70_000_000, "GPT-NeoX, parallel attention"),
    "HuggingFaceTB/SmolLM2-135M": (135_000_000, "Llama architecture, GQA"),
    "Qwen/Qwen2.5-0.5B": (494_000_000, "Qwen2, GQA, tied embeddings"),
    "TinyLlama/TinyLlama-1.1B-Chat-v1.0": (1_100_000_000, "Llama, GQA"),
}


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: object
    model_id: str  # what the user asked for
    revision: str  # hub commit, or "sha256:<hash>" of the local weight files
    n_params: int
    note: str = ""  # e.g. "random weights"


def hub_offline() -> bool:
    return hub.offline_flag() is not None


def hub_reachable(timeout: float = hub.PROBE_TIMEOUT_S) -> bool:
    """Whether the hub answers a TCP connection within ``timeout`` (False when offline mode)."""
    return hub.reachable(timeout)


def content_hash(folder: Path) -> str:
    """sha256 over the weight files of a local model folder (its reproducibility id)."""
    h = hashlib.sha256()
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin"))
    for f in files:
        h.update(f.name.encode())
        with f.open("rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return "sha256:" + h.hexdigest()[:16]


def byte_tokenizer():
    """A byte-level BPE tokenizer with no merges (256 tokens), built in code."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(alphabet))}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def tiny_llama(
    vocab_size: int = 256, hidden: int = 64, layers: int = 2, seed: int = 0
) -> nn.Module:
    """A small Llama (RMSNorm, rotary, SwiGLU, GQA) with random weights."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=hidden * 3,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval()


@torch.no_grad()
def linearize_conv1d(model: nn.Module) -> int:
    """Replace transformers' ``Conv1D`` (GPT-2's x @ W + b, W of shape (in, out)) by the
    ``nn.Linear`` computing the same function, so that recipes can target those layers.
    Returns how many were replaced."""
    from transformers.pytorch_utils import Conv1D

    found = [(n, m) for n, m in model.named_modules() if isinstance(m, Conv1D)]
    for name, conv in found:
        n_in, n_out = conv.weight.shape
        lin = nn.Linear(n_in, n_out, device=conv.weight.device, dtype=conv.weight.dtype)
        lin.weight.copy_(conv.weight.t())
        lin.bias.copy_(conv.bias)
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, lin)
    return len(found)


def _from_folder(path: Path, model_id: str, trust_remote_code: bool) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(
            path, trust_remote_code=trust_remote_code, use_safetensors=None, dtype=torch.float32
        )
        tok = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"cannot load a causal LM from folder {path}: {e}") from None
    linearize_conv1d(model)
    return LoadedModel(
        model=model.eval(),
        tokenizer=tok,
        model_id=model_id,
        revision=content_hash(path),
        n_params=sum(p.numel() for p in model.parameters()),
    )


def _from_hub(model_id: str, revision: str | None, trust_remote_code: bool) -> LoadedModel:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    why_offline = hub.probe()
    offline = why_offline is not None
    kwargs = {
        "revision": revision,
        "trust_remote_code": trust_remote_code,
        "local_files_only": offline,
    }
    try:
        model = AutoModelForCausalLM.from_pretrained(model_id, dtype=torch.float32, **kwargs)
        tok = AutoTokenizer.from_pretrained(model_id, **kwargs)
    except Exception as e:  # transformers raises OSError, ValueError, HTTP errors...
        if offline:
            raise ModelLoadError(
                f"hub unreachable (offline?): {why_offline}; {model_id!r} is not in the local "
                "Hugging Face cache; use the demo model, a local folder, or a cached model"
            ) from None
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "not a valid model identifier" in msg or "404" in msg or "Repository Not Found" in msg:
            raise ModelLoadError(
                f"model not found: {model_id!r} is not a hub id or folder"
            ) from None
        raise ModelLoadError(f"cannot load {model_id!r} from the hub: {msg}") from None
    linearize_conv1d(model)
    commit = getattr(model.config, "_commit_hash", None) or revision or "unknown"
    return LoadedModel(
        model=model.eval(),
        tokenizer=tok,
        model_id=model_id,
        revision=str(commit),
        n_params=sum(p.numel() for p in model.parameters()),
    )


def load_model(
    spec: str,
    *,
    revision: str | None = None,
    trust_remote_code: bool = False,
    device: torch.device | str = "cpu",
) -> LoadedModel:
    """Load ``demo``, ``tiny-random``, a local folder or a hub id, in float32, for evaluation."""
    source = model_source(spec)
    if source == TINY_RANDOM:
        model = tiny_llama()
        loaded = LoadedModel(
            model,
            byte_tokenizer(),
            TINY_RANDOM,
            "seed:0",
            sum(p.numel() for p in model.parameters()),
            note="random weights",
        )
    elif source in BUNDLED.values():
        name = next(k for k, v in BUNDLED.items() if v == source)
        loaded = _from_folder(source, name, trust_remote_code=False)
    elif isinstance(source, Path):
        loaded = _from_folder(source, spec.strip(), trust_remote_code)
    else:
        loaded = _from_hub(source, revision, trust_remote_code)
    loaded.model.to(device)
    return loaded


def model_folder(spec: str) -> Path:
    """A folder with config.json, tokenizer and safetensors for ``spec``, so its blocks can
    stay on disk (core/onload.py): the folder itself, the demo model's, the hub snapshot
    (fetched like any load: from the cache when offline), or ``tiny-random`` written once
    to the data folder. ModelLoadError when there are no safetensors to read lazily."""
    source = model_source(spec)
    if source == TINY_RANDOM:
        folder = data_dir() / "models" / TINY_RANDOM
        if not (folder / "model.safetensors").is_file():
            folder.mkdir(parents=True, exist_ok=True)
            tiny_llama().save_pretrained(folder, safe_serialization=True)
            byte_tokenizer().save_pretrained(folder)
    elif isinstance(source, Path):
        folder = source
    else:
        from huggingface_hub import snapshot_download

        try:
            folder = Path(
                snapshot_download(
                    source,
                    local_files_only=hub.probe() is not None,
                    allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken"],
                )
            )
        except Exception as e:  # offline and not cached, unknown id, HTTP errors
            raise ModelLoadError(f"cannot fetch {source!r} to load it lazily: {e}") from None
    if not any(folder.glob("*.safetensors")):
        raise ModelLoadError(
            f"{spec.strip()!r} has no safetensors files: it cannot be loaded one block at a time"
        )
    return folder


def auth_mode() -> str:
    """``COMPRESSLAB_AUTH``: 'none' (the default), 'password', 'proxy', ...; lower case."""
    return os.environ.get(AUTH_ENV, "").strip().lower() or "none"


def folders_restricted() -> bool:
    """Whether local model folders must lie under the model roots (every team mode)."""
    return auth_mode() != "none"


def model_roots() -> list[Path]:
    """The folders local models may come from in a team mode, resolved (realpath)."""
    raw = [r.strip() for r in os.environ.get(ROOTS_ENV, "").split(os.pathsep) if r.strip()]
    if not raw:
        raw = [str(data_dir()), str(ZOO_DIR)]
    return [Path(os.path.realpath(Path(r).expanduser())) for r in raw]


def roots_text() -> str:
    roots = ", ".join(str(r) for r in model_roots())
    return f"local models must be folders under the model roots ({roots}; set {ROOTS_ENV})"


def looks_like_path(spec: str) -> bool:
    """Written as a path (absolute, ./, ../, ~): a folder, never a hub id."""
    return spec.startswith(FOLDER_PREFIXES) or spec in (".", "..")


def allowed_folder(spec: str) -> Path | None:
    """The resolved folder ``spec`` names if it is a folder under a model root, else None
    (symlinks and ``..`` are resolved first, so neither can leave a root)."""
    real = Path(os.path.realpath(Path(spec.strip()).expanduser()))
    inside = any(real == root or root in real.parents for root in model_roots())
    return real if inside and real.is_dir() else None


def folder_refused(spec: str) -> ModelLoadError:
    """The one message for a folder outside the roots, whether it exists or not."""
    return ModelLoadError(f"model folder {spec!r} is not allowed: {roots_text()}")


def _hub_id(spec: str) -> str:
    """``spec`` if it is well-formed as a hub id ('name' or 'org/name'), else ModelLoadError."""
    ok = len(spec) <= HUB_ID_MAX and HUB_ID_RE.match(spec) and ".." not in spec
    if not ok or "--" in spec or spec.endswith((".", "-")):
        hint = f"; {roots_text()}" if folders_restricted() else ""
        raise ModelLoadError(
            f"model not found: {spec!r} is neither a folder nor a hub id "
            f"(a hub id is 'name' or 'org/name'){hint}"
        )
    return spec


def model_source(spec: str) -> str | Path:
    """Where ``spec`` points: ``tiny-random``, a folder (the demo model's included), or a hub
    id. Raises ModelLoadError for what can be neither, or a folder outside the model roots
    in a team mode. Never touches the network."""
    spec = spec.strip()
    if not spec:
        raise ModelLoadError("no model given: use 'demo', a local folder, or a hub id")
    if spec == TINY_RANDOM:
        return TINY_RANDOM
    if spec in BUNDLED:
        if not (BUNDLED[spec] / "config.json").is_file():
            raise ModelLoadError(f"the bundled {spec} model is missing from {BUNDLED[spec]}")
        return BUNDLED[spec]
    if folders_restricted():
        folder = allowed_folder(spec)
        if folder is not None:
            return folder
        if looks_like_path(spec):
            raise folder_refused(spec)
        return _hub_id(spec)
    if Path(spec).expanduser().is_dir():
        return Path(spec).expanduser()
    if looks_like_path(spec):
        raise ModelLoadError(f"model not found: folder {spec!r} does not exist")
    return _hub_id(spec)


def is_folder_spec(spec: str) -> bool:
    """Whether ``spec`` means a local folder (without revealing folders outside the roots)."""
    spec = spec.strip()
    if looks_like_path(spec):
        return True
    if folders_restricted():
        return allowed_folder(spec) is not None
    return Path(spec).expanduser().is_dir()


def in_hub_cache(model_id: str) -> bool:
    """Whether the config of hub model ``model_id`` is in the local cache (no network)."""
    try:
        from huggingface_hub import try_to_load_from_cache

        return isinstance(try_to_load_from_cache(model_id, "config.json"), str)
    except Exception:  # an unreadable cache, an id the library refuses
        return False


def hub_lacks(model_id: str) -> bool:
    """True when the reachable hub says ``model_id`` has no config.json (a metadata request,
    nothing downloaded); False when it has one or the hub cannot tell (gated, errors)."""
    try:
        from huggingface_hub import file_exists

        return not file_exists(model_id, "config.json")
    except Exception:  # gated or private repos, timeouts: the worker reports them
        return False


def check_model(spec: str) -> None:
    """Refuse, without downloading anything, a model no worker could load: what
    :func:`model_source` refuses, a folder without config.json, a hub id that is not in
    the local cache while the hub is unreachable, or one the hub does not know."""
    source = model_source(spec)
    if source == TINY_RANDOM:
        return
    if isinstance(source, Path):
        if not (source / "config.json").is_file():
            raise ModelLoadError(
                f"model folder {spec.strip()!r} has no config.json: not a Transformers model"
            )
        return
    why_offline = hub.probe()
    if why_offline is not None and not in_hub_cache(source):
        raise ModelLoadError(
            f"hub unreachable (offline?): {why_offline}; {source!r} is not in the local "
            "Hugging Face cache; use the demo model, a local folder, or a cached model"
        )
    if why_offline is None and hub_lacks(source):
        raise ModelLoadError(f"model not found: {source!r} is not a hub id or folder")


def model_skeleton(spec: str) -> nn.Module:
    """The module tree of model ``spec`` ('demo', 'tiny-random', a folder or a hub id) as
    load_model builds it, on the meta device: names and shapes, no weights, no memory."""
    from transformers import AutoConfig, AutoModelForCausalLM

    source = model_source(spec)
    if source == TINY_RANDOM:
        return tiny_llama()  # tiny and built in code: cheaper than a config round trip
    offline = not isinstance(source, Path) and hub.probe() is not None
    try:
        config = AutoConfig.from_pretrained(
            source, local_files_only=offline, trust_remote_code=False
        )
    except Exception as e:  # an unreadable config, an unknown id, hub errors
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        if offline:
            raise ModelLoadError(
                f"hub unreachable (offline?): no config of {spec!r} in the local cache"
            ) from None
        raise ModelLoadError(f"cannot read the config of {spec!r}: {first}") from None
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    linearize_conv1d(model)
    return model


def cached_hub_models() -> list[str]:
    """Model ids already in the local Hugging Face cache (no network)."""
    try:
        from huggingface_hub import scan_cache_dir

        info = scan_cache_dir()
    except Exception:  # no cache folder yet, or an unreadable one
        return []
    return sorted(r.repo_id for r in info.repos if r.repo_type == "model")


def estimate_memory_bytes(n_params: int, bytes_per_param: float = 4.0) -> int:
    """Rough weight memory of a model in float32 before compression."""
    return int(n_params * bytes_per_param)
