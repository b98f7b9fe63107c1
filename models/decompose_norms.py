#!/usr/bin/env python3
"""Spell a model's LayerNormalization nodes (last axis) out in primitive ops, as torch.onnx below
opset 17 and tf2onnx write them: ReduceMean, Sub, Pow, ReduceMean, Add, Sqrt, Div, Mul, Add. The
function is the same (to float rounding); the weights are untouched. It gives a *trained* model in
both spellings, so that a test can check the spelled-out form prunes as the op does.

Usage: python3 models/decompose_norms.py IN.onnx OUT.onnx   (opset 13+; axes as attributes
below 18, as inputs from 18)."""
import sys

import numpy as np
import onnx
from onnx import helper, numpy_helper


def main(src, dst):
    m = onnx.load(src)
    opset = next(o.version for o in m.opset_import if o.domain in ("", "ai.onnx"))
    g = m.graph
    out, inits = [], []
    for n in g.node:
        if n.op_type != "LayerNormalization":
            out.append(n)
            continue
        axis = next((a.i for a in n.attribute if a.name == "axis"), -1)
        eps = next((a.f for a in n.attribute if a.name == "epsilon"), 1e-5)
        assert axis == -1, f"{n.name}: axis {axis}"
        p = n.name or n.output[0]
        inits += [
            numpy_helper.from_array(np.array(2.0, np.float32), p + ".two"),
            numpy_helper.from_array(np.array(eps, np.float32), p + ".eps"),
        ]

        def mean(x, y):
            if opset >= 18:
                inits.append(numpy_helper.from_array(np.array([-1], np.int64), y + ".axes"))
                return helper.make_node("ReduceMean", [x, y + ".axes"], [y], name=y, keepdims=1)
            return helper.make_node("ReduceMean", [x], [y], name=y, axes=[-1], keepdims=1)

        x, scale = n.input[0], n.input[1]
        bias = n.input[2] if len(n.input) > 2 and n.input[2] else None
        out += [
            mean(x, p + "/ReduceMean"),
            helper.make_node("Sub", [x, p + "/ReduceMean"], [p + "/Sub"], name=p + "/Sub"),
            helper.make_node("Pow", [p + "/Sub", p + ".two"], [p + "/Pow"], name=p + "/Pow"),
            mean(p + "/Pow", p + "/ReduceMean_1"),
            helper.make_node("Add", [p + "/ReduceMean_1", p + ".eps"], [p + "/Add"], name=p + "/Add"),
            helper.make_node("Sqrt", [p + "/Add"], [p + "/Sqrt"], name=p + "/Sqrt"),
            helper.make_node("Div", [p + "/Sub", p + "/Sqrt"], [p + "/Div"], name=p + "/Div"),
        ]
        if bias:
            out += [
                helper.make_node("Mul", [p + "/Div", scale], [p + "/Mul"], name=p + "/Mul"),
                helper.make_node("Add", [p + "/Mul", bias], [n.output[0]], name=p + "/Add_1"),
            ]
        else:
            out.append(helper.make_node("Mul", [p + "/Div", scale], [n.output[0]], name=p + "/Mul"))
    del g.node[:]
    g.node.extend(out)
    g.initializer.extend(inits)
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, dst)


if __name__ == "__main__":
    main(*sys.argv[1:])
