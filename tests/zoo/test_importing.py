"""Importing classifiers: ONNX and module:factory round trips, every cut, refusals, integrity."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import msgspec
import numpy as np
import pytest
import torch
from torch import nn

from zoo.cutting import candidate_cuts, choose_partition, partition
from zoo.errors import (
    GraphIntegrityError,
    NoSingleTensorCutError,
    UnsupportedOpError,
    WeightIntegrityError,
)
from zoo.graph import BlockGraph, GraphBlock, GraphNode
from zoo.importing import import_module, import_source, main
from zoo.manifest import read_manifest, write_manifest
from zoo.model_slice import load_slice
from zoo.tracing import trace

onnx = pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")
TOLERANCE = 1e-4


class SmallResidualCNN(nn.Module):
    """Conv-BN-ReLU, a residual block, max-pool, a second stage, global pool, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.residual = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                      nn.Conv2d(8, 8, 3, padding=1))
        self.stage = nn.Sequential(nn.MaxPool2d(2), nn.Conv2d(8, 16, 3, padding=1), nn.Hardswish())
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = torch.relu(x + self.residual(x))
        x = self.stage(x)
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def small_cnn() -> nn.Module:
    """The factory ``module:factory`` imports use (tests.zoo.test_importing:small_cnn)."""
    torch.manual_seed(1)
    return SmallResidualCNN().eval()


class TwoBranches(nn.Module):
    """Two branches live from the input to the last op: no single-tensor cut anywhere."""

    def __init__(self) -> None:
        super().__init__()
        self.left, self.right = nn.Conv2d(3, 4, 3), nn.Conv2d(3, 4, 1)
        self.left_head, self.right_head = nn.Linear(4, 5), nn.Linear(4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = self.left_head(self.left(x).mean(dim=(2, 3)))
        right = self.right_head(self.right(x).mean(dim=(2, 3)))
        return left + right


def two_branches() -> nn.Module:
    """The factory of a model with no single-tensor cut (tests.zoo.test_importing:two_branches)."""
    torch.manual_seed(2)
    return TwoBranches().eval()


def two_cut_mlp() -> nn.Module:
    """A factory of a model with exactly two cuts (after each of its first two ops): at most 3 blocks."""
    torch.manual_seed(3)
    return nn.Sequential(nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 5)).eval()


def _onnxruntime(path: Path, images: torch.Tensor) -> np.ndarray:
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: image[None].numpy()})[0] for image in images])


def _run_split(variant, zoo_dir: Path, images: torch.Tensor) -> torch.Tensor:
    hidden = images
    for index in range(variant.block_count):  # one slice per block, as separate nodes would hold them
        hidden = load_slice(variant, index, index, zoo_dir=zoo_dir).run(hidden)
    return hidden


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory) -> tuple[Path, nn.Module]:
    model = small_cnn()
    path = tmp_path_factory.mktemp("onnx") / "small.onnx"
    torch.onnx.export(model, (torch.randn(1, 3, 16, 16),), str(path), dynamo=False, opset_version=13)
    return path, model


@pytest.fixture(scope="module")
def small_zoo(small_onnx, tmp_path_factory) -> tuple[Path, str]:
    zoo_dir = tmp_path_factory.mktemp("zoo")
    info = import_source(small_onnx[0], "small-cnn", zoo_dir, blocks=3)
    return zoo_dir, info.name


@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_import_matches_onnxruntime_and_torch(small_onnx, small_zoo, batch):
    path, model = small_onnx
    zoo_dir, name = small_zoo
    variant = read_manifest(zoo_dir).variant(name)
    images = torch.randn(batch, 3, 16, 16)
    logits = load_slice(variant, zoo_dir=zoo_dir).run(images)
    assert logits.shape == (batch, 10)
    assert np.abs(logits.numpy() - _onnxruntime(path, images)).max() <= TOLERANCE
    with torch.no_grad():
        assert (logits - model(images)).abs().max() <= TOLERANCE
    assert (_run_split(variant, zoo_dir, images) - logits).abs().max() <= TOLERANCE


def test_manifest_records_graph_weights_and_boundaries(small_zoo):
    zoo_dir, name = small_zoo
    variant = read_manifest(zoo_dir).variant(name)
    assert variant.block_count == 3 and variant.exit_blocks == [2]
    assert variant.graph_file and len(variant.graph_sha256) == 64 and variant.source.startswith("onnx:small.onnx")
    assert variant.blocks[0].input_shape == [3, 16, 16] and variant.blocks[-1].output_shape == [10]
    for previous, block in zip(variant.blocks, variant.blocks[1:], strict=False):
        assert previous.output_shape == block.input_shape
        assert previous.output_bytes == 4 * int(np.prod(block.input_shape))
    assert variant.flops_total == sum(block.flops for block in variant.blocks) > 0
    assert len(variant.block_cpu_ms) == 3
    assert variant.num_classes == 10  # recorded in the manifest: no family code needed
    from safetensors import safe_open

    with safe_open(str(zoo_dir / variant.weights_file), framework="pt") as handle:
        dtypes = {handle.get_tensor(key).dtype for key in handle.keys()}  # noqa: SIM118
    assert dtypes == {torch.float32}  # float32 storage: no fp16 round trip


def test_final_block_answers_early_exit_with_the_logits(small_zoo):
    zoo_dir, name = small_zoo
    variant = read_manifest(zoo_dir).variant(name)
    model = load_slice(variant, zoo_dir=zoo_dir)
    images = torch.randn(2, 3, 16, 16)
    outcome = model.run_with_early_exit(images, threshold=2.0)
    assert outcome.exit_block == 2
    assert torch.equal(outcome.logits, model.run(images))


def test_split_at_every_cut_equals_unsplit(tmp_path):
    model = small_cnn()
    images = torch.randn(3, 3, 16, 16)
    cuts = candidate_cuts(trace(model, images))
    assert len(cuts) >= 4
    info = import_module(model, images, name="small-every-cut", zoo_dir=tmp_path, blocks=len(cuts) + 1)
    assert info.block_count == len(cuts) + 1
    with torch.no_grad():
        expected = model(images)
    assert (_run_split(info, tmp_path, images) - expected).abs().max() <= TOLERANCE


def test_residual_block_is_never_cut_inside():
    traced = trace(small_cnn(), torch.randn(2, 3, 16, 16))
    names = [cut.after for cut in candidate_cuts(traced)]
    residual_ops = [node.name for node in traced.nodes][3:8]  # the residual branch, after the stem
    assert not set(names) & set(residual_ops[:-1])


def test_factory_import_via_cli(tmp_path, capsys):
    status = main(["tests.zoo.test_importing:small_cnn", "--name", "factory-cnn", "--zoo", str(tmp_path),
                   "--blocks", "2", "--input-shape", "3,16,16"])
    assert status == 0 and "2 blocks" in capsys.readouterr().out
    variant = read_manifest(tmp_path).variant("factory-cnn")
    assert variant.source == "module:tests.zoo.test_importing:small_cnn"
    images = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        expected = small_cnn()(images)
    assert (load_slice(variant, zoo_dir=tmp_path).run(images) - expected).abs().max() <= TOLERANCE


def test_model_without_single_tensor_cut_is_refused(tmp_path):
    model = TwoBranches().eval()
    with pytest.raises(NoSingleTensorCutError, match="exactly one tensor is live"):
        import_module(model, torch.randn(2, 3, 8, 8), name="two-branches", zoo_dir=tmp_path, blocks=2)
    assert not (tmp_path / "manifest.json").exists()
    info = import_module(model, torch.randn(2, 3, 8, 8), name="two-branches", zoo_dir=tmp_path, blocks=1)
    assert info.block_count == 1


def test_a_model_without_a_cut_is_refused_by_default_and_imported_whole_only_when_asked(tmp_path, capsys):
    """The default block count used to import such a model silently as one block."""
    with pytest.raises(NoSingleTensorCutError, match="blocks=1"):
        import_module(two_branches(), torch.randn(2, 3, 8, 8), name="two-branches", zoo_dir=tmp_path)
    source = ["tests.zoo.test_importing:two_branches", "--name", "two-branches", "--zoo", str(tmp_path),
              "--input-shape", "3,8,8"]
    assert main(source) == 2
    error = capsys.readouterr().err
    assert len(error.strip().splitlines()) == 1 and "no point where exactly one tensor is live" in error
    assert "--blocks 1" in error and not (tmp_path / "manifest.json").exists()
    assert main([*source, "--blocks", "1"]) == 0
    assert read_manifest(tmp_path).variant("two-branches").block_count == 1
    assert capsys.readouterr().err == ""


def test_fewer_blocks_than_the_default_are_said_in_one_line(tmp_path, capsys):
    source = ["tests.zoo.test_importing:two_cut_mlp", "--name", "mlp", "--zoo", str(tmp_path), "--input-shape", "12"]
    assert main(source) == 0
    said = capsys.readouterr()
    assert said.err.strip() == ("note: 3 blocks, not the default 4: the model has only 2 point(s) where exactly "
                                "one tensor is live")
    assert "3 blocks" in said.out and read_manifest(tmp_path).variant("mlp").block_count == 3
    assert main([*source, "--blocks", "3"]) == 0  # asked for: nothing to say
    assert capsys.readouterr().err == ""


def _copy_zoo(small_zoo, tmp_path: Path):
    zoo_dir, name = small_zoo
    copy = tmp_path / "zoo"
    shutil.copytree(zoo_dir, copy)
    return copy, read_manifest(copy).variant(name)


def test_tampered_weight_file_is_refused(small_zoo, tmp_path):
    zoo_dir, variant = _copy_zoo(small_zoo, tmp_path)
    path = zoo_dir / variant.weights_file
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(WeightIntegrityError):
        load_slice(variant, zoo_dir=zoo_dir)


def test_tampered_graph_file_is_refused(small_zoo, tmp_path):
    zoo_dir, variant = _copy_zoo(small_zoo, tmp_path)
    path = zoo_dir / variant.graph_file
    path.write_bytes(path.read_bytes().replace(b'"aten.relu.default"', b'"aten.sigmoid.default"', 1))
    with pytest.raises(GraphIntegrityError, match="sha256"):
        load_slice(variant, zoo_dir=zoo_dir)


def test_graph_naming_a_non_whitelisted_op_is_refused(small_zoo, tmp_path):
    zoo_dir, variant = _copy_zoo(small_zoo, tmp_path)
    path = zoo_dir / variant.graph_file
    graph = json.loads(path.read_bytes())
    graph["blocks"][0]["nodes"][0]["op"] = "aten.from_file.default"  # a real ATen op that reads files
    path.write_text(json.dumps(graph))
    from zoo.weights import file_sha256

    manifest = read_manifest(zoo_dir)  # a consistent digest: only the whitelist stands in the way
    manifest.variants[variant.name] = msgspec.structs.replace(variant, graph_sha256=file_sha256(path))
    write_manifest(manifest, zoo_dir)
    with pytest.raises(UnsupportedOpError, match="aten.from_file.default"):
        load_slice(read_manifest(zoo_dir).variant(variant.name), zoo_dir=zoo_dir)
    for op in ("builtins.eval", "os.system", "aten.relu"):
        with pytest.raises(UnsupportedOpError):
            GraphBlock(BlockGraph(index=0, input="x", output="y", params={},
                                  nodes=[GraphNode(name="y", op=op, args=[{"ref": "x"}])]))


def test_graph_reference_to_an_undefined_value_is_refused():
    with pytest.raises(GraphIntegrityError):
        GraphBlock(BlockGraph(index=0, input="x", output="y", params={},
                              nodes=[GraphNode(name="y", op="aten.relu.default", args=[{"ref": "z"}])]))


def _handwritten_onnx(path: Path) -> Path:
    """The CNN op set built with onnx.helper: symbolic batch, BN, Pad, depthwise Conv, HardSigmoid gate,
    pools, Concat, Clip, Transpose, ReduceMean, a Shape-derived Reshape, Gemm, MatMul, Softmax."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)

    def const(name: str, array) -> onnx.TensorProto:
        return numpy_helper.from_array(np.asarray(array), name)

    f32 = np.float32
    initializers = [
        const("w1", rng.normal(size=(4, 3, 3, 3)).astype(f32)), const("b1", rng.normal(size=4).astype(f32)),
        const("bn_s", rng.uniform(0.5, 1.5, 4).astype(f32)), const("bn_b", rng.normal(size=4).astype(f32)),
        const("bn_m", rng.normal(size=4).astype(f32)), const("bn_v", rng.uniform(0.5, 1.5, 4).astype(f32)),
        const("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)),
        const("w2", rng.normal(size=(4, 1, 3, 3)).astype(f32)),
        const("lo", np.array(0.0, f32)), const("hi", np.array(6.0, f32)), const("sub", np.array(0.5, f32)),
        const("div", np.array(2.0, f32)), const("zero", np.array(0, np.int64)),
        const("axes0", np.array([0], np.int64)), const("minus1", np.array([-1], np.int64)),
        const("wg", rng.normal(size=(5, 8)).astype(f32)), const("bg", rng.normal(size=5).astype(f32)),
        const("wm", rng.normal(size=(5, 6)).astype(f32)), const("bm", rng.normal(size=6).astype(f32)),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "bn_s", "bn_b", "bn_m", "bn_v"], ["bn"], epsilon=1e-3),
        helper.make_node("HardSwish", ["bn"], ["hs"]),
        helper.make_node("Pad", ["hs", "pads"], ["padded"]),
        helper.make_node("Conv", ["padded", "w2"], ["dw"], group=4),
        helper.make_node("HardSigmoid", ["dw"], ["gate"], alpha=0.2, beta=0.5),
        helper.make_node("Mul", ["hs", "gate"], ["gated"]),
        helper.make_node("MaxPool", ["gated"], ["mp"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("AveragePool", ["gated"], ["ap"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Concat", ["mp", "ap"], ["cat"], axis=1),
        helper.make_node("Sigmoid", ["cat"], ["sg"]),
        helper.make_node("Sub", ["sg", "sub"], ["sb"]),
        helper.make_node("Div", ["sb", "div"], ["dv"]),
        helper.make_node("Relu", ["dv"], ["rl"]),
        helper.make_node("Clip", ["rl", "lo", "hi"], ["cl"]),
        helper.make_node("Transpose", ["cl"], ["tr"], perm=[0, 2, 3, 1]),
        helper.make_node("Transpose", ["tr"], ["tb"], perm=[0, 3, 1, 2]),
        helper.make_node("ReduceMean", ["tb"], ["rm"], axes=[2, 3], keepdims=1),
        helper.make_node("Shape", ["rm"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes0"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["rm", "target"], ["flat"]),
        helper.make_node("Gemm", ["flat", "wg", "bg"], ["gm"], transB=1),
        helper.make_node("MatMul", ["gm", "wm"], ["mm"]),
        helper.make_node("Add", ["mm", "bm"], ["logits_raw"]),
        helper.make_node("Dropout", ["logits_raw"], ["dr"]),
        helper.make_node("Identity", ["dr"], ["id"]),
        helper.make_node("Softmax", ["id"], ["probs"], axis=-1),
    ]
    graph = helper.make_graph(nodes, "handwritten", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                   ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", 6])], initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def test_handwritten_onnx_op_set_matches_onnxruntime(tmp_path):
    path = _handwritten_onnx(tmp_path / "handwritten.onnx")
    info = import_source(path, "handwritten", tmp_path / "zoo", blocks=2, input_shape=(3, 8, 8))
    images = torch.randn(3, 3, 8, 8)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = session.run(None, {"x": images.numpy()})[0]
    actual = _run_split(info, tmp_path / "zoo", images)
    assert np.abs(actual.numpy() - expected).max() <= TOLERANCE


def test_mobilenet_v2_shaped_onnx_via_cli_matches_onnxruntime_at_every_cut(tmp_path, capsys):
    from zoo.mobilenet_v2 import export_onnx, mobilenet_v2_like

    model = mobilenet_v2_like()
    path = export_onnx(model, tmp_path / "mobilenet_v2_like.onnx", input_shape=(3, 96, 96))
    assert main([str(path), "--name", "mnv2", "--zoo", str(tmp_path / "zoo"), "--blocks", "4"]) == 0
    variant = read_manifest(tmp_path / "zoo").variant("mnv2")
    images = torch.randn(3, 3, 96, 96)
    expected = _onnxruntime(path, images)
    assert variant.block_count == 4
    assert np.abs(_run_split(variant, tmp_path / "zoo", images).numpy() - expected).max() <= TOLERANCE
    # every candidate cut, not just the four chosen: one block per cut, run in sequence
    from zoo.onnx_conversion import load_onnx

    traced = trace(load_onnx(path), images)
    cuts = candidate_cuts(traced)
    assert len(cuts) >= 20
    hidden = images
    for block in partition(traced, choose_partition(traced, cuts, len(cuts) + 1)):
        module = GraphBlock(block.graph)
        module.weights.load_state_dict(block.weights)
        with torch.no_grad():
            hidden = module(hidden)
    assert np.abs(hidden.numpy() - expected).max() <= TOLERANCE
