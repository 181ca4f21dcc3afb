"""`load_model`: the embedded default model, torchvision/timm models, or a user's checkpoint."""

from __future__ import annotations

from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from torch import nn

from wsolkit.errors import ModelError, WSOLError
from wsolkit.models.classifier import Classifier, as_classifier
from wsolkit.models.efficientnet_lite import INPUT_SIZES, build_efficientnet_lite

DEFAULT_MODEL = "efficientnet_lite0"

# Chosen by `python benchmarks/objectness_layer.py` on imagenet-dev (docs/evaluation.md).
EFFICIENTNET_LITE0_OBJECTNESS_LAYER = "features.head"

# Layers of the methods whose best layer is not features.head, chosen by MaxBoxAccV2 on
# shared/data/imagenet-dev with `python benchmarks/reach_eval.py` (docs/bagcams_eigencam.md).
EFFICIENTNET_LITE0_METHOD_LAYERS = {
    "bagcams": "features.stage6",
    "eigencam": "features.stage5,features.head",
}

# Module attribute in which save_classifier stores what a Classifier adds to its module.
CLASSIFIER_INFO = "wsolkit_info"
_INFO_FIELDS = (
    "class_names", "input_size", "mean", "std", "feature_layer", "fc_layer", "objectness_layer",
    "multi_label", "method_layers",
)


@lru_cache(maxsize=1)
def imagenet_class_names() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in index order (first synonym of each synset)."""
    text = resources.files("wsolkit.models").joinpath("imagenet_classes.txt").read_text("utf-8")
    names = []
    for line in text.splitlines():
        _synset, _, synonyms = line.partition(" ")
        names.append(synonyms.split(",")[0].strip())
    return tuple(names)


def load_model(
    name: str = DEFAULT_MODEL,
    weights: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> Classifier:
    """Load a classifier ready for localization.

    Args:
        name: ``efficientnet_lite0`` (embedded, the default), ``efficientnet_lite1`` /
            ``efficientnet_lite2`` (the ``lite`` extra, inputs 240 / 260), ``torchvision:<arch>``
            (e.g. ``torchvision:resnet50``), ``timm:<name>``, or a path to a file saved with
            ``torch.save(model)`` or ``torch.jit.save``.
        weights: optional state-dict file for ``torchvision:``/``timm:`` architectures; without
            it their pretrained weights are used (which must already be in the local cache).
        device: where to put the model.

    Returns:
        A :class:`Classifier` in eval mode.

    Raises:
        ModelError: unknown name, missing optional package, unreadable file, ``weights``
            given for a model that takes none.
    """
    if weights is not None and not name.startswith(("torchvision:", "timm:")):
        raise ModelError(
            f"weights={weights}: only torchvision:<arch> and timm:<name> models take a "
            f"state dict, not {name!r}"
        )
    if name in INPUT_SIZES:
        classifier = _embedded(name)
    elif name.startswith("torchvision:"):
        classifier = _torchvision(name.split(":", 1)[1], weights)
    elif name.startswith("timm:"):
        classifier = _timm(name.split(":", 1)[1], weights)
    elif Path(name).suffix in {".pt", ".pth", ".ts"} or Path(name).is_file():
        classifier = _checkpoint(Path(name))
    else:
        raise ModelError(
            f"unknown model {name!r}: use {', '.join(INPUT_SIZES)}, torchvision:<arch>, "
            "timm:<name> or a .pt file"
        )
    classifier.module.to(device)
    return classifier


def _embedded(name: str = DEFAULT_MODEL) -> Classifier:
    size = INPUT_SIZES[name]
    return Classifier(
        module=build_efficientnet_lite(name),
        name=name,
        class_names=imagenet_class_names(),
        input_size=(size, size),
        # The Lite models expect (x*255 - 127) / 128 for RGB x in [0, 1].
        mean=(127 / 255,) * 3,
        std=(128 / 255,) * 3,
        feature_layer="features.head",
        fc_layer="fc",
        objectness_layer=EFFICIENTNET_LITE0_OBJECTNESS_LAYER,
        # measured for Lite0 only; Lite1/Lite2 use the layer feeding the head
        method_layers=dict(EFFICIENTNET_LITE0_METHOD_LAYERS) if name == DEFAULT_MODEL else {},
    )



def read_torch_file(path: str | Path, what: str, error: type[WSOLError] = ModelError) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU, with a one-line error for a bad file.

    Args:
        path: the file (its existence is the caller's check, with its own wording).
        what: what the file should be, for the message (``"head file"``, ``"checkpoint"``).
        error: the exception class raised.

    Raises:
        error: ``"<path>: not a readable <what> (...)"`` when torch cannot load it.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as failure:  # noqa: BLE001 - torch raises many types for a bad file
        # torch's own message spans several lines and talks about its internals
        raise error(f"{path}: not a readable {what} (torch.load failed: "
                    f"{type(failure).__name__})") from None

def _load_state_dict(module: nn.Module, weights: str | Path) -> None:
    path = Path(weights)
    if not path.is_file():
        raise ModelError(f"{path}: weights file not found")
    state = read_torch_file(path, "state dict")
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    try:
        module.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise ModelError(f"{path}: weights do not fit the architecture ({first})") from error


def _torchvision(arch: str, weights: str | Path | None) -> Classifier:
    try:
        import torchvision
    except ImportError as error:
        raise ModelError(
            "torchvision models need torchvision: pip install torchvision"
        ) from error
    try:
        module = torchvision.models.get_model(arch, weights=None if weights else "DEFAULT")
    except Exception as error:  # noqa: BLE001 - unknown arch or weights not cached offline
        raise ModelError(f"torchvision:{arch}: cannot build the model ({error})") from error
    if weights:
        _load_state_dict(module, weights)
    classifier = as_classifier(module.eval())
    classifier.name = f"torchvision:{arch}"
    classifier.class_names = _imagenet_names_if(module)
    return classifier


def _timm(model_name: str, weights: str | Path | None) -> Classifier:
    try:
        import timm
    except ImportError as error:
        raise ModelError("timm models need timm: pip install timm") from error
    try:
        module = timm.create_model(model_name, pretrained=weights is None)
    except Exception as error:  # noqa: BLE001 - unknown name or weights not cached offline
        raise ModelError(f"timm:{model_name}: cannot build the model ({error})") from error
    if weights:
        _load_state_dict(module, weights)
    config = getattr(module, "pretrained_cfg", {}) or {}
    classifier = as_classifier(module.eval())
    classifier.name = f"timm:{model_name}"
    classifier.class_names = _imagenet_names_if(module)
    classifier.mean = tuple(config.get("mean", classifier.mean))
    classifier.std = tuple(config.get("std", classifier.std))
    size = config.get("input_size")
    if size:
        classifier.input_size = (int(size[1]), int(size[2]))
    return classifier


def _checkpoint(path: Path) -> Classifier:
    if not path.is_file():
        raise ModelError(f"{path}: model file not found")
    try:
        module = torch.jit.load(str(path), map_location="cpu")
    except Exception:  # noqa: BLE001 - not TorchScript; try a pickled module next
        try:
            # A whole pickled module needs weights_only=False: only load trusted files.
            module = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as error:  # noqa: BLE001
            raise ModelError(f"{path}: cannot load model ({error})") from error
    if not isinstance(module, nn.Module):
        raise ModelError(
            f"{path}: holds a {type(module).__name__}, not a model; a state dict needs its "
            "architecture, e.g. model='torchvision:resnet50', weights=FILE"
        )
    classifier = as_classifier(module.eval())
    classifier.name = path.name
    classifier.class_names = _imagenet_names_if(module)
    info = getattr(module, CLASSIFIER_INFO, None)
    if isinstance(info, dict):  # written by save_classifier: names, preprocessing, layers
        for key, value in info.items():
            if key in _INFO_FIELDS:
                setattr(classifier, key, value)
    return classifier


def save_classifier(classifier: Classifier, path: str | Path) -> None:
    """Save a classifier as a whole pickled module that :func:`load_model` reads back whole.

    Besides the module, the file keeps the class names, input size, mean/std and default layers
    (as the module attribute ``wsolkit_info``), so ``load_model(path)`` (or ``--model path``)
    gives the same :class:`Classifier`. The file is written atomically.

    Raises:
        InputError: the folder of ``path`` does not exist or the write fails.
    """
    import io

    from wsolkit.data.atomic import write_bytes_atomic

    info = {key: getattr(classifier, key) for key in _INFO_FIELDS}
    if info["class_names"] is not None:
        info["class_names"] = tuple(info["class_names"])
    module = classifier.module
    previous = module.__dict__.get(CLASSIFIER_INFO)
    setattr(module, CLASSIFIER_INFO, info)
    buffer = io.BytesIO()
    try:
        torch.save(module, buffer)
    finally:
        if previous is None:
            delattr(module, CLASSIFIER_INFO)
        else:
            setattr(module, CLASSIFIER_INFO, previous)
    write_bytes_atomic(path, buffer.getvalue())


def _imagenet_names_if(module: nn.Module) -> tuple[str, ...] | None:
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if linears and linears[-1].out_features == 1000:
        return imagenet_class_names()
    return None
