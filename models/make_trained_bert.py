#!/usr/bin/env python3
"""A trained BERT as onnxruntime's transformer optimizer ships it (com.microsoft fused ops).

Writes, next to this script:
  digits_bert_ms.onnx         transformers' BertForSequenceClassification (2 layers, hidden 64,
                              4 heads, intermediate 256: over-parameterised for the task) trained
                              on scikit-learn's digits read as token sequences ([CLS] and the 64
                              pixel intensities 0..16 as tokens), exported with torch.onnx
                              (opset 17, eager attention) and run through onnxruntime's
                              transformer optimizer (model_type bert): EmbedLayerNormalization,
                              Attention, SkipLayerNormalization, BiasGelu / FastGelu.
  digits_{test,calib}_ids.npz input_ids and attention_mask (int64 [N, 65]) for the same test and
                              calibration splits as the other digits models (make_models.py);
                              labels are digits_{test,calib}_y.npy.
  trained_bert_manifest.json  accuracies (torch, the export and the fused model in onnxruntime).

Needs torch, transformers (pip install transformers), onnx, onnxruntime, scikit-learn. Nothing is
downloaded. Deterministic (fixed seeds, one CPU thread). Usage: python3 models/make_trained_bert.py
"""
import json
import math
import os
import sys
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_models import N_CALIB, N_TEST, SEED  # noqa: E402  (same splits as the other digits models)

OUT = os.path.dirname(os.path.abspath(__file__))
SEQ = 65  # [CLS] + 64 pixels
VOCAB = 20  # 0 pad, 1 [CLS], 3..19 the intensities 0..16
HIDDEN, LAYERS, HEADS, FFN = 64, 2, 4, 256

warnings.filterwarnings("ignore")
torch.set_num_threads(1)
torch.manual_seed(SEED)
np.random.seed(SEED)


def tokens(raw):
    """Pixel intensities (0..16) of [N, 64] → input_ids [N, 65] (int64) and an all-ones mask."""
    n = raw.shape[0]
    ids = np.concatenate([np.ones((n, 1), np.int64), raw.astype(np.int64) + 3], axis=1)
    return ids, np.ones_like(ids)


def load():
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    x, y = d.data.astype(np.int64), d.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=N_TEST, stratify=y, random_state=0)
    return x_tr, y_tr, x_te, y_te, x_tr[:N_CALIB], y_tr[:N_CALIB]


def model():
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS, num_attention_heads=HEADS,
                     intermediate_size=FFN, max_position_embeddings=SEQ, type_vocab_size=2, num_labels=10,
                     hidden_dropout_prob=0.1, attention_probs_dropout_prob=0.0, attn_implementation="eager")
    return BertForSequenceClassification(cfg)


def train(m, ids, y, epochs=40, lr=2e-3):
    g = torch.Generator().manual_seed(SEED)
    opt = torch.optim.AdamW(m.parameters(), lr=lr, weight_decay=0.01)
    steps = epochs * math.ceil(len(ids) / 64)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    xt, yt = torch.from_numpy(ids), torch.from_numpy(y)
    m.train()
    for _ in range(epochs):
        perm = torch.randperm(len(xt), generator=g)
        for i in range(0, len(xt), 64):
            idx = perm[i:i + 64]
            loss = F.cross_entropy(m(input_ids=xt[idx]).logits, yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    m.eval()
    return m


class Logits(torch.nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m

    def forward(self, input_ids, attention_mask):
        return self.m(input_ids=input_ids, attention_mask=attention_mask).logits


def ort_accuracy(path, ids, mask, y):
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    logits = s.run(None, {"input_ids": ids, "attention_mask": mask})[0]
    return float((logits.argmax(1) == y).mean())


def main():
    from onnxruntime.transformers.optimizer import optimize_model

    x_tr, y_tr, x_te, y_te, x_ca, y_ca = load()
    (ids_tr, _), (ids_te, mask_te), (ids_ca, mask_ca) = tokens(x_tr), tokens(x_te), tokens(x_ca)
    np.savez(os.path.join(OUT, "digits_test_ids.npz"), input_ids=ids_te, attention_mask=mask_te)
    np.savez(os.path.join(OUT, "digits_calib_ids.npz"), input_ids=ids_ca, attention_mask=mask_ca)
    m = train(model(), ids_tr, y_tr)
    with torch.no_grad():
        acc_torch = float((m(input_ids=torch.from_numpy(ids_te)).logits.argmax(1).numpy() == y_te).mean())
    plain = os.path.join(OUT, "digits_bert_plain.onnx.tmp")
    torch.onnx.export(Logits(m), (torch.from_numpy(ids_te[:2]), torch.from_numpy(mask_te[:2])), plain,
                      input_names=["input_ids", "attention_mask"], output_names=["logits"],
                      dynamic_axes={"input_ids": {0: "batch"}, "attention_mask": {0: "batch"}, "logits": {0: "batch"}},
                      opset_version=17, do_constant_folding=True, dynamo=False)
    acc_plain = ort_accuracy(plain, ids_te, mask_te, y_te)
    opt = optimize_model(plain, model_type="bert", num_heads=HEADS, hidden_size=HIDDEN, opt_level=1)
    os.remove(plain)
    ops = sorted({n.op_type for n in opt.model.graph.node if n.domain == "com.microsoft"})
    for need in ("Attention", "EmbedLayerNormalization", "SkipLayerNormalization"):
        if need not in ops:
            raise SystemExit(f"onnxruntime's optimizer did not fuse {need}: {ops}")
    out = os.path.join(OUT, "digits_bert_ms.onnx")
    onnx.save(opt.model, out)
    acc_fused = ort_accuracy(out, ids_te, mask_te, y_te)
    if abs(acc_fused - acc_plain) > 1e-9:
        raise SystemExit(f"the fused model's accuracy {acc_fused} differs from the export's {acc_plain}")
    manifest = {"model": "digits_bert_ms.onnx", "fused_ops": ops, "params": int(sum(p.numel() for p in m.parameters())),
                "accuracy_torch": acc_torch, "accuracy_export_ort": acc_plain, "accuracy_fused_ort": acc_fused,
                "test": "digits_test_ids.npz", "calibration": "digits_calib_ids.npz", "labels": "digits_test_y.npy"}
    with open(os.path.join(OUT, "trained_bert_manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    print(json.dumps(manifest, indent=1))


if __name__ == "__main__":
    main()
