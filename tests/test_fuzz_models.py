"""A fuzz corpus of ONNX models: the small valid models of tests/onnx_models.py, mutated.

Every mutation is run through `cimc compile` and `cimc count`. A mutation that breaks the model must be refused
cleanly (tests/refusal.py: exit 2, `cimc: error:` naming the culprit, no traceback, nothing written). A mutation
that leaves a model onnxruntime runs must compile and agree with onnxruntime. Which of the two a mutation is was
decided per mutation (by running onnxruntime on it when the corpus was written); the hypothesis property at the end
asks onnxruntime afresh for every random Conv it draws.
"""
from __future__ import annotations

import numpy as np
import onnx
import onnx_models as om
import onnxruntime as ort
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper
from refusal import assert_refused, run_cli

import cimc
from cimc import Session
from cimc.errors import ModelError

COMMANDS = ("compile", "count")


# -- mutation helpers: each edits a ModelProto in place --------------------------------------------------------------
def _node(model, name):
    return next(n for n in model.graph.node if n.name == name)


def _init(model, name):
    return next(t for t in model.graph.initializer if t.name == name)


def set_attr(node_name, **attrs):
    def mutate(model):
        node = _node(model, node_name)
        for key, value in attrs.items():
            for a in [a for a in node.attribute if a.name == key]:
                node.attribute.remove(a)
            if value is not None:
                node.attribute.append(helper.make_attribute(key, value))
    return mutate


def replace_init(name, array):
    def mutate(model):
        _init(model, name).CopyFrom(numpy_helper.from_array(np.asarray(array), name))
    return mutate


def drop_init(name):
    def mutate(model):
        model.graph.initializer.remove(_init(model, name))
    return mutate


def retype_init(name, data_type):
    def mutate(model):
        _init(model, name).data_type = data_type
    return mutate


def redim_init(name, dims):
    def mutate(model):
        t = _init(model, name)
        del t.dims[:]
        t.dims.extend(dims)
    return mutate


def truncate_init(name):
    def mutate(model):
        t = _init(model, name)
        t.raw_data = t.raw_data[: len(t.raw_data) // 2]
    return mutate


def duplicate_init(name, scale):
    def mutate(model):
        t = _init(model, name)
        model.graph.initializer.append(numpy_helper.from_array(numpy_helper.to_array(t) * scale, name))
    return mutate


def duplicate_node(name):
    def mutate(model):
        twin = onnx.NodeProto()
        twin.CopyFrom(_node(model, name))
        twin.name = name + "_twin"
        model.graph.node.append(twin)
    return mutate


def set_model(**fields):
    def mutate(model):
        for key, value in fields.items():
            setattr(model, key, value)
    return mutate


def set_opset(version, domain=""):
    def mutate(model):
        del model.opset_import[:]
        model.opset_import.append(helper.make_opsetid(domain, version))
    return mutate


def set_op(node_name, op_type, domain=""):
    def mutate(model):
        node = _node(model, node_name)
        node.op_type, node.domain = op_type, domain
        if domain:
            model.opset_import.append(helper.make_opsetid(domain, 1))
    return mutate


def rename_input(node_name, index, tensor):
    def mutate(model):
        _node(model, node_name).input[index] = tensor
    return mutate


def set_io_type(which, index, elem_type=None, dims=None):
    def mutate(model):
        vi = getattr(model.graph, which)[index]
        if elem_type is not None:
            vi.type.tensor_type.elem_type = elem_type
        if dims is not None:
            shape = vi.type.tensor_type.shape
            del shape.dim[:]
            for d in dims:
                dim = shape.dim.add()
                if isinstance(d, str):
                    dim.dim_param = d
                else:
                    dim.dim_value = d
    return mutate


def duplicate_graph_input(model):
    model.graph.input.append(model.graph.input[0])


def init_shadows_output(model):
    out = model.graph.node[0].output[0]
    model.graph.initializer.append(numpy_helper.from_array(np.zeros(3, np.float32), out))


def self_loop(model):
    node = model.graph.node[0]
    node.input[0] = node.output[0]


def unproduced_output(model):
    model.graph.output.append(helper.make_tensor_value_info("nowhere", TensorProto.FLOAT, [1]))


def no_nodes(model):
    del model.graph.node[:]


def _conv_weight(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# -- the corpus of bad mutations: id -> (base model, mutation, what the error must name) --------------------------
# om.conv(): input 'input' [N, 4, 8, 8] -> node 'conv' (weight 'conv.weight' [6, 4, 3, 3], bias 'conv.bias' [6]).
BAD = {
    # Conv attributes (issue 11: 0 output channels, kernel > input, negative pads, stride 0, ...)
    "conv_stride_0": (om.conv, set_attr("conv", strides=[0, 0]), ["'conv'", "strides"]),
    "conv_stride_0_1": (om.conv, set_attr("conv", strides=[0, 1]), ["'conv'", "strides"]),
    "conv_stride_negative": (om.conv, set_attr("conv", strides=[-1, 1]), ["'conv'", "strides"]),
    "conv_stride_short": (om.conv, set_attr("conv", strides=[1]), ["'conv'", "strides"]),
    "conv_stride_long": (om.conv, set_attr("conv", strides=[1, 1, 1]), ["'conv'", "strides"]),
    "conv_dilation_0": (om.conv, set_attr("conv", dilations=[0, 0]), ["'conv'", "dilations"]),
    "conv_dilation_negative": (om.conv, set_attr("conv", dilations=[1, -2]), ["'conv'", "dilations"]),
    "conv_dilation_short": (om.conv, set_attr("conv", dilations=[1]), ["'conv'", "dilations"]),
    "conv_pads_negative": (om.conv, set_attr("conv", pads=[-1, -1, -1, -1]), ["'conv'", "pads"]),
    "conv_pads_one_negative": (om.conv, set_attr("conv", pads=[0, 0, 0, -1]), ["'conv'", "pads"]),
    "conv_pads_short": (om.conv, set_attr("conv", pads=[1, 1]), ["'conv'", "pads"]),
    "conv_pads_long": (om.conv, set_attr("conv", pads=[1] * 6), ["'conv'", "pads"]),
    "conv_group_0": (om.conv, set_attr("conv", group=0), ["'conv'", "group"]),
    "conv_group_negative": (om.conv, set_attr("conv", group=-1), ["'conv'", "group"]),
    "conv_group_3": (om.conv, set_attr("conv", group=3), ["'conv'", "group"]),
    "conv_group_5": (om.conv, set_attr("conv", group=5), ["'conv'", "group"]),
    "conv_group_6": (om.conv, set_attr("conv", group=6), ["'conv'", "group"]),
    "conv_group_2_wrong_weight": (om.conv, set_attr("conv", group=2), ["'conv'", "group"]),
    "conv_kernel_shape_mismatch": (om.conv, set_attr("conv", kernel_shape=[5, 5]), ["'conv'", "kernel"]),
    "conv_kernel_shape_rank": (om.conv, set_attr("conv", kernel_shape=[3]), ["'conv'", "kernel"]),
    "conv_auto_pad_unknown": (om.conv, set_attr("conv", auto_pad="MIDDLE"), ["'conv'", "MIDDLE"]),
    "conv_unknown_attribute": (om.conv, set_attr("conv", bogus=1), ["'conv'", "bogus"]),
    "conv_strides_as_floats": (om.conv, set_attr("conv", strides=[1.0, 1.0]), ["'conv'", "strides"]),
    "conv_group_as_string": (om.conv, set_attr("conv", group="two"), ["'conv'", "group"]),
    "conv_kernel_larger_than_input": (om.conv, set_attr("conv", kernel_shape=None),
                                      ["'conv'", "kernel"]),   # weight replaced below (BAD_WEIGHTS)
    "conv_dilated_kernel_too_large": (om.conv, set_attr("conv", dilations=[4, 4]), ["'conv'", "kernel"]),
    # Conv weight / bias tensors
    "conv_zero_output_channels": (om.conv, replace_init("conv.weight", np.zeros((0, 4, 3, 3), np.float32)),
                                  ["'conv'", "conv.weight"]),
    "conv_zero_kernel": (om.conv, replace_init("conv.weight", np.zeros((6, 4, 0, 3), np.float32)), ["'conv'"]),
    "conv_weight_rank_3": (om.conv, replace_init("conv.weight", _conv_weight((6, 4, 3))), ["'conv'"]),
    "conv_weight_rank_5": (om.conv, replace_init("conv.weight", _conv_weight((6, 4, 1, 3, 3))), ["'conv'"]),
    "conv_weight_wrong_in_channels": (om.conv, replace_init("conv.weight", _conv_weight((6, 3, 3, 3))),
                                      ["'conv'"]),
    "conv_weight_float64": (om.conv, replace_init("conv.weight", _conv_weight((6, 4, 3, 3)).astype(np.float64)),
                            ["'conv'"]),
    "conv_weight_int64": (om.conv, replace_init("conv.weight", np.ones((6, 4, 3, 3), np.int64)), ["'conv'"]),
    "conv_bias_short": (om.conv, replace_init("conv.bias", np.zeros(5, np.float32)), ["'conv'", "conv.bias"]),
    "conv_bias_2d": (om.conv, replace_init("conv.bias", np.zeros((6, 1), np.float32)), ["'conv'"]),
    "conv_weight_dropped": (om.conv, drop_init("conv.weight"), ["conv.weight"]),
    "conv_bias_dropped": (om.conv, drop_init("conv.bias"), ["conv.bias"]),
    "conv_weight_retyped_int64": (om.conv, retype_init("conv.weight", TensorProto.INT64), ["conv.weight"]),
    "conv_weight_retyped_double": (om.conv, retype_init("conv.weight", TensorProto.DOUBLE), ["conv.weight"]),
    "conv_weight_retyped_string": (om.conv, retype_init("conv.weight", TensorProto.STRING), ["conv.weight"]),
    "conv_weight_dims_grown": (om.conv, redim_init("conv.weight", [7, 4, 3, 3]), ["conv.weight"]),
    "conv_weight_dims_shrunk": (om.conv, redim_init("conv.weight", [5, 4, 3, 3]), ["conv.weight"]),
    "conv_weight_truncated": (om.conv, truncate_init("conv.weight"), ["conv.weight"]),
    "conv_bias_truncated": (om.conv, truncate_init("conv.bias"), ["conv.bias"]),
    # Gemm / MatMul shapes and attributes (om.gemm: input [N, 12], 'gemm.weight' [5, 12] with transB=1)
    "gemm_transB_flipped": (om.gemm, set_attr("gemm", transB=0), ["'gemm'"]),
    "gemm_weight_k_off": (om.gemm, replace_init("gemm.weight", _conv_weight((5, 11))), ["'gemm'"]),
    "gemm_weight_rank_1": (om.gemm, replace_init("gemm.weight", _conv_weight((12,))), ["'gemm'"]),
    "gemm_weight_rank_3": (om.gemm, replace_init("gemm.weight", _conv_weight((1, 5, 12))), ["'gemm'"]),
    "gemm_weight_empty": (om.gemm, replace_init("gemm.weight", np.zeros((0, 12), np.float32)), ["'gemm'"]),
    "gemm_bias_short": (om.gemm, replace_init("gemm.bias", np.zeros(3, np.float32)), ["'gemm'", "gemm.bias"]),
    "gemm_bias_rows": (om.gemm, replace_init("gemm.bias", np.zeros((2, 5), np.float32)),
                       ["'gemm'", "gemm.bias"]),
    "gemm_bias_rank_3": (om.gemm, replace_init("gemm.bias", np.zeros((1, 1, 5), np.float32)), ["'gemm'"]),
    "gemm_alpha_nan": (om.gemm, set_attr("gemm", alpha=float("nan")), ["'gemm'", "NaN"]),
    "gemm_alpha_inf": (om.gemm, set_attr("gemm", alpha=float("inf")), ["'gemm'", "Inf"]),
    "gemm_beta_nan": (om.gemm, set_attr("gemm", beta=float("nan")), ["'gemm'", "beta", "NaN"]),
    "gemm_unknown_attribute": (om.gemm, set_attr("gemm", transC=1), ["'gemm'", "transC"]),
    "matmul_k_off": (om.matmul, replace_init("matmul.weight", _conv_weight((11, 5))), ["'matmul'"]),
    "matmul_no_columns": (om.matmul, replace_init("matmul.weight", np.zeros((12, 0), np.float32)), ["'matmul'"]),
    "matmul_weight_dropped": (om.matmul, drop_init("matmul.weight"), ["matmul.weight"]),
    # other ops' attributes
    "bn_epsilon_nan": (om.conv_bn, set_attr("bn", epsilon=float("nan")), ["'bn'", "epsilon", "NaN"]),
    "bn_training_mode": (om.conv_bn, set_attr("bn", training_mode=1), ["'bn'", "training_mode"]),
    "bn_scale_short": (om.conv_bn, replace_init("bn.weight", np.ones(5, np.float32)), ["'bn'"]),
    "leaky_relu_alpha_nan": (lambda: om.activation("LeakyRelu", alpha=0.1), set_attr("leakyrelu", alpha=float("nan")),
                             ["'leakyrelu'", "alpha", "NaN"]),
    "maxpool_stride_0": (lambda: om.pool("MaxPool", hw=8, strides=[2, 2]), set_attr("maxpool", strides=[0, 0]),
                         ["'maxpool'", "strides"]),
    "maxpool_pads_negative": (lambda: om.pool("MaxPool", hw=8, strides=[2, 2]),
                              set_attr("maxpool", pads=[-1, -1, -1, -1]), ["'maxpool'", "pads"]),
    "maxpool_no_kernel": (lambda: om.pool("MaxPool", hw=8, strides=[2, 2]), set_attr("maxpool", kernel_shape=None),
                          ["'maxpool'", "kernel_shape"]),
    "avgpool_kernel_0": (lambda: om.pool("AveragePool", hw=8, strides=[2, 2]),
                         set_attr("averagepool", kernel_shape=[0, 0]), ["'averagepool'", "kernel"]),
    "concat_axis_out_of_range": (om.concat, set_attr("concat", axis=7), ["'concat'", "axis"]),
    "softmax_axis_out_of_range": (om.softmax, set_attr("softmax", axis=5), ["'softmax'", "axis"]),
    "transpose_bad_perm": (om.transpose, set_attr("transpose", perm=[0, 0, 1, 2]), ["'transpose'", "perm"]),
    "flatten_axis_out_of_range": (om.flatten, set_attr("flatten1", axis=9), ["'flatten1'", "axis"]),
    # graph structure (issue 11: duplicate initializers, two producers, ir_version 99)
    "duplicate_initializer_same": (om.conv, duplicate_init("conv.weight", 1.0), ["conv.weight", "more than once"]),
    "duplicate_initializer_other": (om.conv, duplicate_init("conv.weight", -1.0), ["conv.weight", "more than once"]),
    "duplicate_initializer_cnn": (om.small_cnn, duplicate_init("gemm1.bias", 0.0), ["gemm1.bias", "more than once"]),
    "two_producers": (om.conv, duplicate_node("conv"), ["'logits'", "'conv_twin'"]),
    "duplicate_node_names": (om.small_cnn, lambda m: [setattr(n, "name", "same") for n in m.graph.node],
                             ["'same'"]),
    "two_producers_cnn": (om.small_cnn, duplicate_node("relu1"), ["'relu1'", "'relu1_twin'"]),
    "duplicate_graph_input": (om.conv, duplicate_graph_input, ["'input'"]),
    "initializer_shadows_output": (om.conv, init_shadows_output, ["'logits'"]),
    "ir_version_99": (om.conv, set_model(ir_version=99), ["ir_version 99"]),
    "ir_version_huge": (om.conv, set_model(ir_version=2 ** 40), ["ir_version"]),
    "opset_7": (om.conv, set_opset(7), ["opset 7"]),
    "opset_99": (om.conv, set_opset(99), ["opset 99"]),
    "opset_missing": (om.conv, set_opset(1, "com.example"), ["opset"]),
    "unknown_op": (om.conv, set_op("conv", "Convolution"), ["'conv'", "Convolution"]),
    "custom_domain_op": (om.activation, set_op("relu", "Relu", "com.example"), ["'relu'", "com.example"]),
    "input_from_nowhere": (om.conv, rename_input("conv", 0, "ghost"), ["ghost"]),
    "weight_from_nowhere": (om.conv, rename_input("conv", 1, "ghost.weight"), ["ghost.weight"]),
    "self_loop": (om.conv, self_loop, ["cycle", "'conv'"]),
    "output_never_produced": (om.conv, unproduced_output, ["nowhere"]),
    "no_nodes": (om.conv, no_nodes, ["logits"]),
    "input_int64": (om.conv, set_io_type("input", 0, elem_type=TensorProto.INT64), ["'conv'"]),
    "input_rank_3": (om.conv, set_io_type("input", 0, dims=["N", 4, 8]), ["'conv'"]),
    "input_wrong_channels": (om.conv, set_io_type("input", 0, dims=["N", 5, 8, 8]), ["'conv'"]),
    "input_symbolic_spatial": (om.conv, set_io_type("input", 0, dims=["N", 4, "H", "W"]), ["'conv'"]),
    "output_double": (om.conv, set_io_type("output", 0, elem_type=TensorProto.DOUBLE), ["'conv'"]),
    # found by fuzzing: tracebacks mid-calibration, and an abort inside onnx's (and onnxruntime's) C++ code
    "clip_bound_not_scalar": (lambda: om.activation("Clip", min=0.0, max=6.0), rename_input("clip", 2, "conv1.bias"),
                              ["'clip'", "scalar"]),
    "gemm_transA_symbolic_k": (om.gemm, set_attr("gemm", transA=1), ["'gemm'", "batch"]),
    "reshape_target_mismatch": (om.reshape, replace_init("reshape.shape", np.array([0, 7], np.int64)),
                                ["'fc'"]),    # shape inference follows the new shape and stops at the MatMul
    "reshape_two_minus_ones": (om.reshape, replace_init("reshape.shape", np.array([-1, -1], np.int64)),
                               ["'reshape'"]),
    "runtime_reshape_then_wrong_fc": (om.pytorch_flatten, replace_init("fc.weight", _conv_weight((10, 37))),
                                      ["'fc'", "37"]),
    "pad_value_not_scalar": (om.newest_opset, rename_input("pad", 2, "bn.weight"), ["'pad'"]),
    "pad_huge": (om.pad, replace_init("pad.pads", np.array([0, 0, 0, 1, 0, 0, 0, 2 ** 40], np.int64)),
                 ["'pad'", "values per sample"]),
    "unused_conv_kernel_shape": (lambda: om.concat(axis=2), set_attr("conv_b", kernel_shape=[2, 1]),
                                 ["'conv_b'", "kernel_shape"]),   # onnxruntime runs unused nodes too
    "add_broadcasts_only_at_batch_1": (om.transpose, lambda m: (set_attr("transpose", perm=None)(m),
                                                                set_op("fc", "Add")(m)), ["'fc'", "Add"]),
    "conv_auto_pad_and_pads": (lambda: om.conv(pads=[0, 1, 2, 1]), set_attr("conv", auto_pad="VALID"),
                               ["'conv'", "auto_pad", "pads"]),
    "conv_same_with_dilation": (lambda: om.conv(k=2, auto_pad="SAME_UPPER"), set_attr("conv", dilations=[2, 2]),
                                ["'conv'", "auto_pad", "dilations"]),
    "maxpool_pad_as_large_as_kernel": (lambda: om.pool("MaxPool", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
                                       set_attr("maxpool", pads=[3, 1, 1, 1]), ["'maxpool'", "pads"]),
    "avgpool_pad_larger_than_kernel": (lambda: om.pool("AveragePool", hw=8, strides=[2, 2]),
                                       set_attr("averagepool", pads=[0, 0, 5, 0]), ["'averagepool'", "pads"]),
    "onnx_aborts_on_negative_size": (om.slice_, set_attr("conv", kernel_shape=[100, 3]), ["crashed", "kernel"]),
}
# onnxruntime aborts the whole process on these (as onnx's shape inference does): never hand them to it in-process
ABORTS_ONNXRUNTIME = {"onnx_aborts_on_negative_size"}
# onnxruntime runs these; cimc refuses them on purpose
REFUSED_BY_CIMC_ONLY = {
    "duplicate_initializer_same", "duplicate_initializer_other", "duplicate_initializer_cnn",  # ambiguous weights
    "gemm_alpha_nan", "gemm_alpha_inf", "gemm_beta_nan", "bn_epsilon_nan", "leaky_relu_alpha_nan",  # non-finite
    "gemm_bias_rows",             # C [2, 5] broadcasts only for a batch of exactly 2; cimc's batch is free
    "matmul_no_columns",          # an empty weight: nothing to map onto arrays
    "opset_7", "opset_missing",   # outside cimc's scope, said so
}
BAD_WEIGHTS = {"conv_kernel_larger_than_input": ("conv.weight", _conv_weight((6, 4, 11, 11)))}


def _build_bad(case):
    base, mutate, culprit = BAD[case]
    model = base()
    if case in BAD_WEIGHTS:
        replace_init(*BAD_WEIGHTS[case])(model)
    mutate(model)
    return base(), model, culprit


def _argv(command, path, calib, out):
    return [command, path] + (["--calibration", calib, "-o", out] if command == "compile" else [])


def _write_case(tmp_path, valid, model):
    path = tmp_path / "model.onnx"
    path.write_bytes(model.SerializeToString())
    calib = tmp_path / "calib.npz"
    np.savez(calib, **om.random_feeds(valid, batch=4, seed=5))
    return path, calib


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case", sorted(BAD))
def test_broken_model_is_refused(tmp_path, case, command):
    valid, model, culprit = _build_bad(case)
    path, calib = _write_case(tmp_path, valid, model)
    assert_refused(_argv(command, path, calib, tmp_path / "out"), ["model.onnx", *culprit], watch=[tmp_path],
                   case=f"model {case} ({command})")


def test_bad_mutations_are_refused_by_onnxruntime_too():
    """The corpus is honest: onnxruntime refuses (at load or on a first run) every model it holds, except exactly
    the ones cimc refuses for its own reasons (REFUSED_BY_CIMC_ONLY)."""
    options = ort.SessionOptions()
    options.log_severity_level = 4
    runs = []
    for case in sorted(set(BAD) - ABORTS_ONNXRUNTIME):
        _, model, _ = _build_bad(case)
        try:
            session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
            session.run(None, om.random_feeds(model, batch=2, seed=0))
        except Exception:
            continue
        runs.append(case)
    assert runs == sorted(REFUSED_BY_CIMC_ONLY)


# -- non-finite weights at seeded random indices, in every float constant of several models --------------------------
NONFINITE_MODELS = {"conv": om.conv, "gemm": om.gemm, "matmul": om.matmul, "conv_bn": om.conv_bn,
                    "small_cnn": om.small_cnn, "matmul_const_left": om.matmul_const_left,
                    "conv_add_bias": om.conv_add_bias, "conv_mul_channel": lambda: om.conv_arith("Mul", True),
                    "legacy_opset8": om.legacy_opset8, "folded_weights": om.folded_weights,
                    "initializers_as_inputs": om.initializers_as_inputs, "clip": lambda: om.activation(
                        "Clip", min=0.0, max=6.0)}
KINDS = (np.nan, np.inf, -np.inf)


def _nonfinite_cases():
    cases = []
    for name, builder in sorted(NONFINITE_MODELS.items()):
        for i, t in enumerate(builder().graph.initializer):
            if t.data_type == TensorProto.FLOAT:
                cases.append((name, t.name, i % 3))
    return cases


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("model_name,tensor,kind", _nonfinite_cases())
def test_nonfinite_constant_is_refused(tmp_path, model_name, tensor, kind, command):
    valid = NONFINITE_MODELS[model_name]()
    model = NONFINITE_MODELS[model_name]()
    t = _init(model, tensor)
    array = numpy_helper.to_array(t).copy()
    rng = np.random.default_rng(sum(map(ord, model_name + tensor)))
    flat = int(rng.integers(array.size))
    index = tuple(int(i) for i in np.unravel_index(flat, array.shape))
    value = np.nan if tensor.startswith("clip.") else KINDS[kind]   # an infinite Clip bound is valid (VALID)
    array[index] = value
    t.CopyFrom(numpy_helper.from_array(array, tensor))
    label = "NaN" if np.isnan(value) else ("Inf" if value > 0 else "-Inf")
    path, calib = _write_case(tmp_path, valid, model)
    culprit = ["model.onnx", f"tensor '{tensor}'", f"holds {label} at index {index}" if array.ndim else label]
    assert_refused(_argv(command, path, calib, tmp_path / "out"), culprit, watch=[tmp_path],
                   case=f"non-finite {model_name}/{tensor} ({command})")


def test_nonfinite_constant_node_is_refused(tmp_path):
    for value, label in zip(KINDS, ("NaN", "Inf", "-Inf")):
        model = om.constant_weights()
        node = _node(model, "conv.weight")
        w = numpy_helper.to_array(node.attribute[0].t).copy()
        w[3, 2, 1, 0] = value
        node.attribute[0].t.CopyFrom(numpy_helper.from_array(w, "conv.weight"))
        path, calib = _write_case(tmp_path, om.constant_weights(), model)
        for command in COMMANDS:
            assert_refused(_argv(command, path, calib, tmp_path / "out"),
                           ["tensor 'conv.weight'", "Constant node", f"{label} at index (3, 2, 1, 0)"],
                           watch=[tmp_path], case=f"non-finite Constant {label} ({command})")


# -- mutations that leave a valid model: compile and agree with onnxruntime --------------------------------------
def reverse_nodes(model):
    nodes = list(model.graph.node)[::-1]
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def wrong_value_info(model):
    model.graph.value_info.append(helper.make_tensor_value_info("relu1", TensorProto.FLOAT, [5, 5, 5, 5]))


def unused_initializer(model):
    model.graph.initializer.append(numpy_helper.from_array(np.ones((3, 3), np.float32), "unused.weight"))


VALID = {
    "ir_version_3": (om.conv, set_model(ir_version=3)),
    "ir_version_0": (om.conv, set_model(ir_version=0)),
    "nodes_reversed": (om.small_cnn, reverse_nodes),                 # not topologically sorted
    "wrong_declared_output_shape": (om.conv, set_io_type("output", 0, dims=["N", 7, 6, 6])),
    "fixed_batch_output_shape": (om.conv, set_io_type("output", 0, dims=[1, 6, 6, 6])),
    "wrong_value_info": (om.small_cnn, wrong_value_info),
    "unused_initializer": (om.small_cnn, unused_initializer),
    "clip_max_inf": (lambda: om.activation("Clip", min=0.0, max=6.0), replace_init("clip.max", np.float32(np.inf))),
    "clip_min_minus_inf": (lambda: om.activation("Clip", min=0.0, max=6.0),
                           replace_init("clip.min", np.float32(-np.inf))),
    "maxpool_same_and_pads": (lambda: om.pool("MaxPool", hw=9, strides=[2, 2]),
                              set_attr("maxpool", auto_pad="SAME_UPPER", pads=[1, 1, 1, 1])),
    "producer_and_doc": (om.conv, set_model(producer_name="\u2603" * 50, doc_string="x" * 1000)),
}


def _agrees(model, got):
    feeds = om.random_feeds(model, batch=4, seed=1)
    expected = om.run_ort(model, feeds)[0]
    out = Session(got, backend="float").run(feeds)
    assert out.shape == expected.shape
    assert np.abs(out - expected).max() <= 1e-4 * max(np.abs(expected).max(), 1e-6)


@pytest.mark.parametrize("case", sorted(VALID))
def test_valid_mutation_compiles_and_agrees_with_onnxruntime(tmp_path, case):
    base, mutate = VALID[case]
    model = base()
    mutate(model)
    path, calib = _write_case(tmp_path, model, model)
    assert run_cli(["count", path])[0] == 0
    code, _, err = run_cli(["compile", path, "--calibration", calib, "-o", tmp_path / "out"])
    assert code == 0, err
    _agrees(model, cimc.load(tmp_path / "out"))


# -- a property: any Conv geometry is either run by onnxruntime and by cimc alike, or refused by both -----------
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(k=st.integers(1, 10), stride=st.integers(-1, 4), dilation=st.integers(-1, 4), pad=st.integers(-1, 3),
       group=st.sampled_from([-1, 0, 1, 2, 3, 4]), cout=st.sampled_from([0, 2, 4, 6]))
def test_conv_geometry_agrees_with_onnxruntime(k, stride, dilation, pad, group, cout):
    cin = 4
    model = om.conv(cin=cin)
    cg = cin // group if group >= 1 and cin % group == 0 else 3
    replace_init("conv.weight", _conv_weight((cout, cg, k, k)))(model)
    replace_init("conv.bias", np.zeros(cout, np.float32))(model)
    set_attr("conv", kernel_shape=[k, k], strides=[stride, stride], dilations=[dilation, dilation], pads=[pad] * 4,
             group=group)(model)
    model.graph.output[0].type.tensor_type.ClearField("shape")   # whatever the output turns out to be
    feeds = om.random_feeds(model, batch=2, seed=0)
    options = ort.SessionOptions()
    options.log_severity_level = 4
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        expected = session.run(None, feeds)[0]
        runs = expected.size > 0
    except Exception:
        runs = False
    if not runs:   # onnxruntime refuses it, or it computes nothing: cimc must refuse, naming the node
        with pytest.raises(ModelError, match="'conv'"):
            cimc.count(model)
        return
    manifest = cimc.compile(model, "ideal", calibration=om.random_feeds(model, batch=4, seed=2))
    got = Session(manifest, backend="float").run(feeds)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-4 * max(np.abs(expected).max(), 1e-6)


# -- broken external data (inside the model's folder; escapes are in test_model_boundary.py) ---------------------
def _external_entries(**entries):
    def mutate(tensor, data_file_size):
        fields = {"location": "model.onnx.data", "offset": "0", "length": str(data_file_size)}
        fields.update({k: v.format(size=data_file_size) for k, v in entries.items()})
        del tensor.external_data[:]
        for key, value in fields.items():
            if value is not None:
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
    return mutate


EXTERNAL = {
    "offset_past_end": _external_entries(offset="{size}0"),
    "length_past_end": _external_entries(length="{size}1"),
    "offset_not_a_number": _external_entries(offset="zero"),
    "length_negative": _external_entries(length="-4"),
    "length_short": _external_entries(length="8"),
    "checksum_garbage": _external_entries(checksum="not-a-sha"),
    "unknown_key": _external_entries(colour="blue"),
    "nul_in_location": _external_entries(location="model.onnx.data\0.txt"),
}


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("case", sorted(EXTERNAL))
def test_broken_external_data_is_refused(tmp_path, case, command):
    model = om.conv()
    weight = _init(model, "conv.weight")
    data = numpy_helper.to_array(weight).tobytes()
    (tmp_path / "model.onnx.data").write_bytes(data)
    EXTERNAL[case](weight, len(data))
    weight.data_location = TensorProto.EXTERNAL
    weight.ClearField("raw_data")
    path, calib = _write_case(tmp_path, om.conv(), model)
    if case in ("checksum_garbage", "unknown_key"):   # onnx ignores these keys: the data is read and is right
        code, _, err = run_cli(_argv(command, path, calib, tmp_path / "out"))
        assert code == 0 and "Warning:" not in err and "Traceback" not in err, err
        if command == "compile":
            _agrees(om.conv(), cimc.load(tmp_path / "out"))
        return
    assert_refused(_argv(command, path, calib, tmp_path / "out"), ["model.onnx", "conv.weight"], watch=[tmp_path],
                   case=f"external data {case} ({command})")


# -- SAME padding, every small geometry: cimc agrees with onnxruntime, or both refuse, or cimc refuses a crop ------
@pytest.mark.parametrize("op", ["Conv", "MaxPool", "AveragePool"])
@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER"])
@pytest.mark.parametrize("k,stride,hw", [(k, s, hw) for k in (1, 2, 3) for s in (1, 2, 3, 5, 9) for hw in (5, 8)])
def test_same_padding_agrees_with_onnxruntime(op, auto_pad, k, stride, hw):
    if op == "Conv":
        model = om.conv(k=1, hw=hw)
        replace_init("conv.weight", _conv_weight((6, 4, k, k)))(model)
        node = "conv"
    else:
        model, node = om.pool(op, hw=hw), op.lower()
    set_attr(node, kernel_shape=[k, k], strides=[stride, stride], auto_pad=auto_pad)(model)
    model.graph.output[0].type.tensor_type.ClearField("shape")
    feeds = om.random_feeds(model, batch=2, seed=0)
    try:
        expected = om.run_ort(model, feeds)[0]
    except Exception:   # onnxruntime refuses it: so must cimc
        expected = None
    if expected is None or stride > k:     # stride > kernel: negative SAME padding, supported where it only
        try:                              # crops nothing that matters, else refused
            manifest = cimc.compile(model, "ideal", calibration=feeds)
        except ModelError as exc:
            # a conv is cimc's own (it names the attribute); a pool runs in onnxruntime, whose reason is quoted
            assert f"'{node}'" in str(exc) and ("auto_pad" in str(exc) or op != "Conv")
            return
        assert expected is not None, "cimc compiled what onnxruntime refuses"
    else:
        manifest = cimc.compile(model, "ideal", calibration=feeds)
    got = Session(manifest, backend="float").run(feeds)
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() <= 1e-4 * max(np.abs(expected).max(), 1e-6)
