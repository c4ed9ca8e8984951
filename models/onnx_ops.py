"""A tiny ONNX graph builder: standard ops only, so ONNX Runtime Web runs it on wasm and webgpu.

Rules:
- Only default-domain ops (no com.microsoft contrib ops): MatMul, Add, Sub, Mul, Div,
  Sqrt, Erf, Tanh, Sigmoid, Softmax, Transpose, Reshape, Gather, Conv, Concat, Expand,
  Cast, Unsqueeze, LayerNormalization (opset >= 17; decomposed below that).
- Every value name is unique (SSA): `fresh(hint)` appends a counter. Initializer names
  are the canonical weight names, so a shard's file lists the weights it holds.
- Weights are added once (`weight(name)`), constants are small initializers.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

ONNX_DTYPE = {np.dtype(np.float32): TensorProto.FLOAT, np.dtype(np.int64): TensorProto.INT64}


class GraphBuilder:
    """Accumulates nodes, initializers, inputs and outputs of one ONNX graph."""

    def __init__(self, weights: Mapping[str, np.ndarray], opset: int = 17) -> None:
        self.weights, self.opset = weights, opset
        self.nodes: list[onnx.NodeProto] = []
        self.inits: dict[str, onnx.TensorProto] = {}
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self._count = 0
        self._cache: dict[tuple, str] = {}

    # -- names, constants, weights ------------------------------------------------
    def fresh(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def const(self, value, dtype=np.float32) -> str:
        arr = np.asarray(value, dtype=dtype)
        key = ("const", arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._cache:
            name = self.fresh("const")
            self.inits[name] = numpy_helper.from_array(arr, name)
            self._cache[key] = name
        return self._cache[key]

    def weight(self, name: str) -> str:
        if name not in self.inits:
            arr = np.ascontiguousarray(self.weights[name], dtype=np.float32)
            self.inits[name] = numpy_helper.from_array(arr, name)
        return name

    def has(self, name: str) -> bool:
        return name in self.weights

    def op(self, op_type: str, inputs: Sequence[str], hint: str | None = None, **attrs) -> str:
        out = self.fresh(hint or op_type.lower())
        self.nodes.append(helper.make_node(op_type, list(inputs), [out], name=out, **attrs))
        return out

    # -- graph IO -----------------------------------------------------------------
    def add_input(self, name: str, dtype, shape: Sequence[int]) -> str:
        self.inputs.append(helper.make_tensor_value_info(name, ONNX_DTYPE[np.dtype(dtype)], list(shape)))
        return name

    def add_output(self, value: str, name: str, dtype, shape: Sequence[int]) -> None:
        self.nodes.append(helper.make_node("Identity", [value], [name], name=f"output_{name}"))
        self.outputs.append(helper.make_tensor_value_info(name, ONNX_DTYPE[np.dtype(dtype)], list(shape)))

    def model(self, graph_name: str, doc: str = "") -> onnx.ModelProto:
        graph = helper.make_graph(self.nodes, graph_name, self.inputs, self.outputs, list(self.inits.values()))
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", self.opset)],
                              producer_name="shardtwin", doc_string=doc)
        m.ir_version = min(m.ir_version, 8)  # onnxruntime-web 1.30 and older runtimes read IR 8
        return m

    # -- layers -------------------------------------------------------------------
    def linear(self, x: str, prefix: str) -> str:
        y = self.op("MatMul", [x, self.weight(f"{prefix}.weight")], f"{prefix}.matmul")
        if self.has(f"{prefix}.bias"):
            y = self.op("Add", [y, self.weight(f"{prefix}.bias")], f"{prefix}.add")
        return y

    def layer_norm(self, x: str, prefix: str, eps: float) -> str:
        w, b = self.weight(f"{prefix}.weight"), self.weight(f"{prefix}.bias")
        if self.opset >= 17:
            return self.op("LayerNormalization", [x, w, b], prefix, axis=-1, epsilon=float(eps))
        mean = self.op("ReduceMean", [x], f"{prefix}.mean", axes=[-1], keepdims=1)
        d = self.op("Sub", [x, mean], f"{prefix}.centered")
        var = self.op("ReduceMean", [self.op("Mul", [d, d])], f"{prefix}.var", axes=[-1], keepdims=1)
        std = self.op("Sqrt", [self.op("Add", [var, self.const(eps)])], f"{prefix}.std")
        return self.op("Add", [self.op("Mul", [self.op("Div", [d, std]), w]), b], prefix)

    def activation(self, x: str, kind: str) -> str:
        kind = (kind or "gelu").lower()
        if kind in ("gelu", "gelu_erf"):
            e = self.op("Erf", [self.op("Mul", [x, self.const(1 / math.sqrt(2))])])
            return self.op("Mul", [self.op("Mul", [x, self.const(0.5)]), self.op("Add", [e, self.const(1.0)])], "gelu")
        if kind in ("gelu_new", "gelu_tanh", "gelu_pytorch_tanh"):
            cube = self.op("Mul", [self.op("Mul", [x, x]), x])
            inner = self.op("Add", [x, self.op("Mul", [cube, self.const(0.044715)])])
            t = self.op("Tanh", [self.op("Mul", [inner, self.const(math.sqrt(2 / math.pi))])])
            return self.op("Mul", [self.op("Mul", [x, self.const(0.5)]), self.op("Add", [t, self.const(1.0)])], "gelu")
        if kind == "quick_gelu":
            return self.op("Mul", [x, self.op("Sigmoid", [self.op("Mul", [x, self.const(1.702)])])], "quick_gelu")
        if kind == "relu":
            return self.op("Relu", [x])
        raise ValueError(f"unsupported activation {kind!r}")

    def heads(self, x: str, batch: int, seq: int, n_heads: int, head_dim: int, perm: Sequence[int]) -> str:
        r = self.op("Reshape", [x, self.const([batch, seq, n_heads, head_dim], np.int64)])
        return self.op("Transpose", [r], perm=list(perm))

    def attention(self, x: str, prefix: str, dims: tuple[int, int, int, int], bias: str | None,
                  kv: str | None = None, kv_seq: int | None = None) -> str:
        """Multi-head attention of x (queries) over kv (default x); bias is added to the scores.

        dims = (batch, seq, hidden, heads); bias broadcasts to [B, heads, S, S_kv]."""
        b, s, h, nh = dims
        hd, src, ks = h // nh, kv or x, kv_seq or s
        q = self.heads(self.linear(x, f"{prefix}.query"), b, s, nh, hd, (0, 2, 1, 3))
        k = self.heads(self.linear(src, f"{prefix}.key"), b, ks, nh, hd, (0, 2, 3, 1))
        v = self.heads(self.linear(src, f"{prefix}.value"), b, ks, nh, hd, (0, 2, 1, 3))
        scores = self.op("Mul", [self.op("MatMul", [q, k]), self.const(1 / math.sqrt(hd))], f"{prefix}.scores")
        if bias is not None:
            scores = self.op("Add", [scores, bias], f"{prefix}.masked")
        probs = self.op("Softmax", [scores], f"{prefix}.probs", axis=-1)
        ctx = self.op("Transpose", [self.op("MatMul", [probs, v])], perm=[0, 2, 1, 3])
        ctx = self.op("Reshape", [ctx, self.const([b, s, h], np.int64)], f"{prefix}.context")
        return self.linear(ctx, f"{prefix}.output")

    def mask_bias(self, mask: str) -> str:
        """int64 mask [B,S] (1 = token) -> float additive bias [B,1,1,S]: 0 or -10000."""
        m = self.op("Cast", [mask], "mask_f", to=TensorProto.FLOAT)
        neg = self.op("Mul", [self.op("Sub", [self.const(1.0), m]), self.const(-10000.0)])
        return self.op("Unsqueeze", [neg, self.const([1, 2], np.int64)], "mask_bias")
