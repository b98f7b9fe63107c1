#!/usr/bin/env python3
"""Derive small attention test models with fused attention ops (for head pruning tests).

Writes, next to this script:
  bert_ms_attention.onnx  tiny BERT (2 layers, 4 heads, hidden 128) from
                          ../shared/models/tiny_bert_random_ts.onnx, weights re-randomised (the
                          source is random-init with all-zero biases, which would hide bias bugs),
                          then run through onnxruntime's transformer optimizer (fuses
                          SkipLayerNormalization / BiasGelu); its attention is fused into
                          com.microsoft Attention (packed QKV weight [128, 384], num_heads=4) by
                          graph surgery when the optimizer does not match it (see below).
  bert_ms_embed.onnx      bert_ms_attention.onnx with its embeddings fused as onnxruntime's
                          optimizer fuses a BERT's (word, position and token-type Gathers, their
                          sum and the LayerNorm into one com.microsoft EmbedLayerNormalization; the
                          export's token types are all 0, so row 0 of their table is added into
                          the position table, as the fused op has no segment input then). The
                          same function as bert_ms_attention.onnx (checked in onnxruntime).
  attention_onnx23.onnx   2 layers of ONNX Attention (opset 23) with separate Q/K/V MatMul+Add
                          projections and an output projection: layer 0 multi-head
                          (q_num_heads = kv_num_heads = 4) with a 2-D additive float mask input,
                          layer 1 grouped-query (q_num_heads = 4, kv_num_heads = 2, causal).
  mha_ms_fp16.onnx        mha_ms.onnx in float16, inputs and outputs too (onnxruntime's
                          float16 converter), as GPU and NPU deployments ship transformers.
  mha_ms.onnx             1 layer of com.microsoft MultiHeadAttention (num_heads=4) fed by
                          separate Q/K/V MatMul projections, with the packed [3*hidden] bias
                          input, and an output projection.

Deterministic (fixed seeds). Usage: python3 models/derive_attention_models.py [SRC_BERT]
"""
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
SRC = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "..", "shared", "models", "tiny_bert_random_ts.onnx")
if not os.path.exists(SRC):
    SRC = "/work/shared/models/tiny_bert_random_ts.onnx"


def randomise(model, seed):
    """Replace every float initializer by small random values (same shape), LayerNorm scales ~1."""
    rng = np.random.default_rng(seed)
    for t in model.graph.initializer:
        if t.data_type != TensorProto.FLOAT:
            continue
        a = numpy_helper.to_array(t)
        if a.ndim == 1 and "weight" in t.name.lower() and "LayerNorm" in t.name:
            v = 1.0 + 0.1 * rng.standard_normal(a.shape)
        else:
            v = 0.08 * rng.standard_normal(a.shape)
        t.CopyFrom(numpy_helper.from_array(v.astype(np.float32), t.name))
    return model


def dce(graph):
    """Drop nodes whose outputs nothing reads, and unused initializers."""
    outs = {o.name for o in graph.output}
    while True:
        used = set(outs)
        for n in graph.node:
            used.update(i for i in n.input if i)
        keep = [n for n in graph.node if any(o in used for o in n.output if o)]
        if len(keep) == len(graph.node):
            break
        del graph.node[:]
        graph.node.extend(keep)
    used = {i for n in graph.node for i in n.input}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)


def fuse_attention(m, num_heads, rng):
    """Replace each BERT self-attention (q/k/v MatMul+Add ... output dense MatMul) by one
    com.microsoft Attention node, the way onnxruntime's fusion writes it: packed weight
    [hidden, 3*hidden], packed bias [3*hidden], int32 2-D mask_index. Fresh random Q/K/V biases
    (the source shares one bias tensor between all of them)."""
    g = m.graph
    by_name = {n.name: n for n in g.node}
    inits = {t.name: t for t in g.initializer}
    g.node.append(helper.make_node("Cast", ["attention_mask"], ["mask_index_i32"], name="mask_index_cast", to=TensorProto.INT32))
    layer = 0
    while f"/m/bert/encoder/layer.{layer}/attention/self/query/MatMul" in by_name:
        pre = f"/m/bert/encoder/layer.{layer}/attention"
        mms = [by_name[f"{pre}/self/{p}/MatMul"] for p in ("query", "key", "value")]
        ws = [numpy_helper.to_array(inits[mm.input[1]]) for mm in mms]
        w = np.concatenate(ws, axis=1)
        b = (0.1 * rng.standard_normal(w.shape[1])).astype(np.float32)
        wn, bn = f"{pre}/qkv_weight", f"{pre}/qkv_bias"
        g.initializer.extend([numpy_helper.from_array(w, wn), numpy_helper.from_array(b, bn)])
        out = f"{pre}/attention_output"
        g.node.append(
            helper.make_node("Attention", [mms[0].input[0], wn, bn, "mask_index_i32"], [out], name=f"{pre}/Attention", domain="com.microsoft", num_heads=num_heads)
        )
        by_name[f"{pre}/output/dense/MatMul"].input[0] = out
        layer += 1
    if layer == 0:
        raise SystemExit("no BERT attention block found")
    if not any(o.domain == "com.microsoft" for o in m.opset_import):
        m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    dce(g)
    # Topological order: the new nodes were appended at the end.
    order, done, pending = [], {i.name for i in g.input} | {t.name for t in g.initializer} | {""}, list(g.node)
    while pending:
        rest = []
        for n in pending:
            (order if all(i in done for i in n.input) else rest).append(n)
            if all(i in done for i in n.input):
                done.update(n.output)
        if len(rest) == len(pending):
            raise SystemExit("cycle while sorting nodes")
        pending = rest
    del g.node[:]
    g.node.extend(order)
    return layer


def bert_ms_attention(out):
    """onnxruntime's optimizer fuses LayerNorm/GELU of the tiny BERT but not its attention (the
    torch 2.x export adds a NaN guard after Softmax and scales q and k separately, which the
    fusion patterns do not match), so the attention blocks are fused by `fuse_attention`."""
    from onnxruntime.transformers.optimizer import optimize_model

    src = randomise(onnx.load(SRC), 1)
    tmp = out + ".src.onnx"
    onnx.save(src, tmp)
    try:
        opt = optimize_model(tmp, model_type="bert", num_heads=4, hidden_size=128, opt_level=1)
    finally:
        os.remove(tmp)
    m = opt.model
    n_att = sum(1 for n in m.graph.node if n.op_type == "Attention" and n.domain == "com.microsoft")
    if n_att == 0:
        n_att = fuse_attention(m, 4, np.random.default_rng(2))
    if n_att != 2:
        raise SystemExit(f"expected 2 Attention nodes, got {n_att}")
    onnx.save(m, out)


def bert_ms_embed(src, out):
    """Fuse the embeddings of `src` (bert_ms_attention.onnx) into EmbedLayerNormalization."""
    import onnxruntime as ort

    m = onnx.load(src)
    g = m.graph
    inits = {t.name: t for t in g.initializer}
    prod = {o: n for n in g.node for o in n.output}
    ln = next(n for n in g.node if n.op_type == "LayerNormalization")
    gathers = {}
    stack = [ln.input[0]]
    while stack:
        n = prod[stack.pop()]
        if n.op_type == "Add":
            stack += list(n.input)
        elif n.op_type == "Gather" and n.input[0] in inits:
            gathers[n.input[0].split(".")[-2]] = n
        else:
            raise SystemExit(f"unexpected {n.op_type} in the embedding sum")
    word, pos, tt = (gathers[k] for k in ("word_embeddings", "position_embeddings", "token_type_embeddings"))
    # The token-type ids are a buffer of zeros expanded to the input's shape.
    zeros = [t for t in g.initializer if t.name.endswith("Constant_8_output_0")]
    for n in g.node:
        if n.output[0].endswith("Constant_8_output_0") and n.op_type == "Constant":
            zeros.append(n.attribute[0].t)
    if len(zeros) != 1 or numpy_helper.to_array(zeros[0]).any():
        raise SystemExit("token type ids are not the all-zero buffer")
    pe = numpy_helper.to_array(inits[pos.input[0]]) + numpy_helper.to_array(inits[tt.input[0]])[0]
    g.initializer.append(numpy_helper.from_array(pe.astype(np.float32), "embeddings.position_plus_token_type"))
    eps = next(a.f for a in ln.attribute if a.name == "epsilon")
    cast = helper.make_node("Cast", [word.input[1]], ["input_ids_int32"], name="input_ids_cast", to=TensorProto.INT32)
    eln = helper.make_node(
        "EmbedLayerNormalization",
        ["input_ids_int32", "", word.input[0], "embeddings.position_plus_token_type", "", ln.input[1], ln.input[2]],
        [ln.output[0], "embeddings_mask_index"],
        name="EmbedLayerNormalization_0",
        domain="com.microsoft",
        epsilon=eps,
    )
    i = list(g.node).index(ln)
    g.node.remove(ln)
    g.node.insert(i, eln)
    g.node.insert(i, cast)
    dce(g)
    onnx.save(m, out)
    feeds = {"input_ids": np.random.default_rng(5).integers(0, 1000, (2, 16)), "attention_mask": np.ones((2, 16), np.int64)}
    a = ort.InferenceSession(src, providers=["CPUExecutionProvider"]).run(None, feeds)
    b = ort.InferenceSession(out, providers=["CPUExecutionProvider"]).run(None, feeds)
    err = max(float(np.abs(x - y).max()) for x, y in zip(a, b))
    if err > 1e-4:
        raise SystemExit(f"bert_ms_embed differs from its source by {err}")


def init(rng, name, shape, scale=0.15):
    return numpy_helper.from_array((scale * rng.standard_normal(shape)).astype(np.float32), name)


def linear(nodes, inits, rng, x, name, n_in, n_out):
    inits += [init(rng, f"{name}.w", [n_in, n_out]), init(rng, f"{name}.b", [n_out], 0.1)]
    nodes += [
        helper.make_node("MatMul", [x, f"{name}.w"], [f"{name}.mm"], name=f"{name}/MatMul"),
        helper.make_node("Add", [f"{name}.mm", f"{name}.b"], [f"{name}.out"], name=f"{name}/Add"),
    ]
    return f"{name}.out"


def attention_onnx23(out):
    rng = np.random.default_rng(23)
    hidden, d = 64, 16
    nodes, inits = [], []
    x = "x"
    for layer, (hq, hkv) in enumerate([(4, 4), (4, 2)]):
        p = f"l{layer}"
        q = linear(nodes, inits, rng, x, f"{p}.q", hidden, hq * d)
        k = linear(nodes, inits, rng, x, f"{p}.k", hidden, hkv * d)
        v = linear(nodes, inits, rng, x, f"{p}.v", hidden, hkv * d)
        ins = [q, k, v] + (["mask"] if layer == 0 else [])
        attrs = dict(q_num_heads=hq, kv_num_heads=hkv)
        if layer == 1:
            attrs["is_causal"] = 1
        nodes.append(helper.make_node("Attention", ins, [f"{p}.att"], name=f"{p}/Attention", **attrs))
        o = linear(nodes, inits, rng, f"{p}.att", f"{p}.o", hq * d, hidden)
        nodes.append(helper.make_node("Add", [x, o], [f"{p}.res"], name=f"{p}/residual"))
        x = f"{p}.res"
    nodes.append(helper.make_node("Identity", [x], ["y"], name="out"))
    g = helper.make_graph(
        nodes,
        "attention_onnx23",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", hidden]),
            helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["seq", "seq"]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", hidden])],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 23)], producer_name="onnx-emp derive_attention_models.py")
    m.ir_version = 10
    onnx.checker.check_model(m, full_check=True)
    onnx.save(m, out)


def mha_ms(out):
    rng = np.random.default_rng(7)
    hidden, heads = 64, 4
    nodes, inits = [], []
    q = "q.mm"
    for nm in "qkv":
        inits.append(init(rng, f"{nm}.w", [hidden, hidden]))
        nodes.append(helper.make_node("MatMul", ["x", f"{nm}.w"], [f"{nm}.mm"], name=f"{nm}/MatMul"))
    inits.append(init(rng, "qkv.b", [3 * hidden], 0.1))
    nodes.append(
        helper.make_node("MultiHeadAttention", [q, "k.mm", "v.mm", "qkv.b"], ["att"], name="mha", domain="com.microsoft", num_heads=heads)
    )
    o = linear(nodes, inits, rng, "att", "o", hidden, hidden)
    nodes.append(helper.make_node("Add", ["x", o], ["y"], name="residual"))
    g = helper.make_graph(
        nodes,
        "mha_ms",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", hidden])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", hidden])],
        inits,
    )
    m = helper.make_model(
        g, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)], producer_name="onnx-emp derive_attention_models.py"
    )
    m.ir_version = 8
    onnx.save(m, out)


def main():
    bert_ms_attention(os.path.join(HERE, "bert_ms_attention.onnx"))
    bert_ms_embed(os.path.join(HERE, "bert_ms_attention.onnx"), os.path.join(HERE, "bert_ms_embed.onnx"))
    attention_onnx23(os.path.join(HERE, "attention_onnx23.onnx"))
    mha_ms(os.path.join(HERE, "mha_ms.onnx"))
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(os.path.join(HERE, "mha_ms.onnx")), keep_io_types=False),
              os.path.join(HERE, "mha_ms_fp16.onnx"))
    for f in ["bert_ms_attention.onnx", "bert_ms_embed.onnx", "attention_onnx23.onnx", "mha_ms.onnx", "mha_ms_fp16.onnx"]:
        print(f, os.path.getsize(os.path.join(HERE, f)), "bytes")


if __name__ == "__main__":
    main()
