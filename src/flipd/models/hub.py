"""Models named by a Hugging Face Hub id (``owner/name``): fetched into the hub cache, never unpickled.

:func:`hub_snapshot` turns a repository id into a local folder: the snapshot in the Hugging
Face cache (``HF_HUB_CACHE``, or ``HF_HOME/hub``), downloaded with
``huggingface_hub.snapshot_download`` when it is not there yet. Only safetensors weights,
JSON configs and text files (tokenizer vocabularies, merges) are fetched, never ``.bin``,
``.pt``, ``.ckpt`` or other pickles. In a pipeline repository (``model_index.json``) only the
weights inside the components' subfolders are fetched (not the single-file checkpoints that
some repositories keep at the top), and precision variants (``*.fp16.safetensors``, ...) are
skipped, as diffusers loads the plain files.

The cache and ``HF_HUB_OFFLINE=1`` (the cache only) are read from the environment at each call; ``HF_ENDPOINT`` names another
hub. When the hub cannot be reached and the cache lacks the model, :class:`HubUnavailableError`
says what failed and how to fix it (download on a machine with internet, then pass the folder,
or point ``HF_HOME`` at a cache that has it).

huggingface_hub is imported only here, only when a hub id is used.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ..runs.environment import cache_directories

__all__ = [
    "HubUnavailableError",
    "METADATA_PATTERNS",
    "WEIGHT_PATTERNS",
    "hub_snapshot",
    "is_hub_id",
    "upload_folder",
]

#: Configs and text files fetched first (model_index.json, config.json, tokenizer files, model cards).
METADATA_PATTERNS: tuple[str, ...] = ("*.json", "*.txt", "*.md")
#: The only weights ever fetched.
WEIGHT_PATTERNS: tuple[str, ...] = ("*.safetensors",)
#: Precision variants that diffusers does not load by default; never fetched.
VARIANT_PATTERNS: tuple[str, ...] = ("*.fp16.safetensors", "*.fp16-*.safetensors", "*.bf16.safetensors",
                                     "*.bf16-*.safetensors", "*.non_ema.safetensors", "*.ema.safetensors")

_HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


class HubUnavailableError(FileNotFoundError):
    """A model named by a hub id is neither on this machine nor downloadable now (the message
    says what failed and how to get the model)."""


def is_hub_id(source: str | os.PathLike) -> bool:
    """Whether ``source`` reads as a hub repository id ``owner/name`` and is not a local path.

    A string with exactly one ``/``, letters, digits, ``.``, ``_`` and ``-``, not starting with
    ``.``, naming nothing on disk, and whose ``owner`` part is not a local folder either
    (``models/typo`` next to a ``models/`` folder is a mistyped local path, not a hub id).
    """
    text = os.fspath(source)
    if not isinstance(text, str) or _HUB_ID.fullmatch(text) is None or ".." in text:
        return False
    return not Path(text).exists() and not Path(text).parent.is_dir()


def _truthy(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _cache_dir() -> str:
    """The hub cache the environment names now (HF_HUB_CACHE, else HF_HOME/hub, else the
    default under XDG_CACHE_HOME or ~/.cache), as :func:`flipd.runs.environment.cache_directories` reports it."""
    return cache_directories()["huggingface_hub"]


def _fix(repo_id: str) -> str:
    return (
        f"Download it on a machine with internet (hf download {repo_id} --local-dir DIR, or "
        f"huggingface-cli download {repo_id} --local-dir DIR), copy DIR here and pass DIR instead; "
        f"or set HF_HOME to a Hugging Face cache that holds {repo_id}."
    )


def _download(repo_id: str, patterns: list[str], revision: str | None) -> Path:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError
    except ImportError as error:
        raise ImportError(
            f"{repo_id!r} is not a local folder; loading it from the Hugging Face Hub needs huggingface_hub "
            f"(pip install 'flipd[images]'), or pass a local folder. ({error})"
        ) from error
    offline = _truthy(os.environ.get("HF_HUB_OFFLINE")) or _truthy(os.environ.get("TRANSFORMERS_OFFLINE"))
    try:
        folder = snapshot_download(
            repo_id, revision=revision, cache_dir=_cache_dir(), local_files_only=offline,
            endpoint=os.environ.get("HF_ENDPOINT") or None, allow_patterns=patterns,
            ignore_patterns=list(VARIANT_PATTERNS),
        )
    except RepositoryNotFoundError as error:
        raise HubUnavailableError(
            f"No model at {repo_id!r}: there is no such local folder, and the Hugging Face Hub has no "
            "model repository of that name (or it is private or gated and no valid token was given: "
            f"hf auth login). Check the id, or train a local model with: flipd train DATA --out {repo_id}"
        ) from error
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError, ConnectionError) as error:
        cache = _cache_dir()
        if offline:
            what = f"HF_HUB_OFFLINE is set and the hub cache ({cache}) does not hold it"
        else:
            endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
            cause = error.__cause__ or error
            reason = f"{type(cause).__name__}: " + " ".join(str(cause).split())[:160]
            what = f"the Hugging Face Hub at {endpoint} could not be reached ({reason}) and the hub cache ({cache}) does not hold it"
        raise HubUnavailableError(
            f"No model at {repo_id!r}: there is no such local folder, and as a Hugging Face Hub id it cannot "
            f"be fetched: {what}. For a hub model: {_fix(repo_id)} For a local model: flipd train DATA --out {repo_id}"
        ) from error
    return Path(folder)


def _weight_patterns(folder: Path) -> list[str]:
    """Safetensors patterns for a snapshot: inside each pipeline component, or the top level."""
    index_path = folder / "model_index.json"
    if not index_path.is_file():
        return list(WEIGHT_PATTERNS)
    try:
        index = json.loads(index_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return list(WEIGHT_PATTERNS)
    components = [name for name, value in index.items() if isinstance(value, list) and value and value[0] is not None]
    return [f"{name}/{pattern}" for name in components for pattern in WEIGHT_PATTERNS]


def hub_snapshot(repo_id: str, *, revision: str | None = None) -> Path:
    """The local snapshot folder of the hub model ``repo_id`` (fetched if it is not cached).

    Args:
        repo_id: ``owner/name`` of a model repository on the Hugging Face Hub.
        revision: a branch, tag or commit (default the main branch).

    Returns:
        The snapshot folder in the hub cache, holding the repository's configs, text files and
        safetensors weights (never pickles).

    Raises:
        ValueError: ``repo_id`` is not of the form ``owner/name``.
        HubUnavailableError: the model is not cached and the hub cannot be reached (or
            ``HF_HUB_OFFLINE`` is set), or the repository does not exist.
        ImportError: huggingface_hub is not installed.
    """
    if not isinstance(repo_id, str) or _HUB_ID.fullmatch(repo_id) is None:
        raise ValueError(f"{repo_id!r} is not a Hugging Face Hub id; expected 'owner/name'.")
    folder = _download(repo_id, list(METADATA_PATTERNS), revision)
    return _download(repo_id, _weight_patterns(folder), revision)


def upload_folder(folder: str | os.PathLike, repo_id: str, *, private: bool | None = None,
                  token: str | None = None, commit_message: str = "Upload with flipd") -> str:
    """Upload the files of ``folder`` to the hub model repository ``repo_id`` (created if needed).

    Returns:
        The URL of the commit.

    Raises:
        ValueError: ``repo_id`` is not ``owner/name``.
        HubUnavailableError: HF_HUB_OFFLINE is set, or the hub cannot be reached or refuses
            the upload (the message says which, and how to upload by hand).
        ImportError: huggingface_hub is not installed.
    """
    if not isinstance(repo_id, str) or _HUB_ID.fullmatch(repo_id) is None or ".." in repo_id:
        raise ValueError(f"{repo_id!r} is not a Hugging Face Hub id; expected 'owner/name'.")
    by_hand = f"Upload by hand from a machine with internet: hf upload {repo_id} {os.fspath(folder)} ."
    if _truthy(os.environ.get("HF_HUB_OFFLINE")):
        raise HubUnavailableError(f"Cannot push to {repo_id!r}: HF_HUB_OFFLINE is set. {by_hand}")
    try:
        from huggingface_hub import HfApi
    except ImportError as error:
        raise ImportError(f"Pushing to the Hugging Face Hub needs huggingface_hub (pip install 'flipd[images]'). ({error})") from error
    api = HfApi(endpoint=os.environ.get("HF_ENDPOINT") or None, token=token)
    try:
        api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        commit = api.upload_folder(folder_path=os.fspath(folder), repo_id=repo_id, repo_type="model",
                                   commit_message=commit_message)
    except Exception as error:  # the hub's HTTP errors (OSError) or its HTTP client's transport errors
        if not (isinstance(error, (OSError, ConnectionError)) or type(error).__module__.startswith("httpx")):
            raise
        endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
        reason = f"{type(error).__name__}: " + " ".join(str(error).split())[:160]
        raise HubUnavailableError(
            f"Cannot push to {repo_id!r} at {endpoint} ({reason}). Check the connection and the token "
            f"(hf auth login). {by_hand}"
        ) from error
    return str(getattr(commit, "commit_url", commit))
