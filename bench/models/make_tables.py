#!/usr/bin/env python3
"""Writes the layer-shape tables bench/models/*.txt from the published architectures.

The tables are what gradcomm-bench --model and the Python tools read; this script is how
they were written (no torchvision or transformers needed), kept so a reader can check
each shape against the architecture. gradcomm-bench checks the totals independently.

Run: python3 bench/models/make_tables.py   (rewrites the .txt files next to it)
"""
import os
import sys


def resnet50():
    """torchvision.models.resnet50 (v1.5: stride on the 3x3 conv), 1000 classes.
    named_parameters() order: conv, then bn weight and bias, block by block."""
    t = [("conv1.weight", (64, 3, 7, 7)), ("bn1.weight", (64,)), ("bn1.bias", (64,))]
    inplanes = 64
    for stage, (planes, blocks) in enumerate([(64, 3), (128, 4), (256, 6), (512, 3)], 1):
        for b in range(blocks):
            p = f"layer{stage}.{b}."
            t += [(p + "conv1.weight", (planes, inplanes, 1, 1)),
                  (p + "bn1.weight", (planes,)), (p + "bn1.bias", (planes,)),
                  (p + "conv2.weight", (planes, planes, 3, 3)),
                  (p + "bn2.weight", (planes,)), (p + "bn2.bias", (planes,)),
                  (p + "conv3.weight", (planes * 4, planes, 1, 1)),
                  (p + "bn3.weight", (planes * 4,)), (p + "bn3.bias", (planes * 4,))]
            if b == 0:
                t += [(p + "downsample.0.weight", (planes * 4, inplanes, 1, 1)),
                      (p + "downsample.1.weight", (planes * 4,)),
                      (p + "downsample.1.bias", (planes * 4,))]
            inplanes = planes * 4
    t += [("fc.weight", (1000, 2048)), ("fc.bias", (1000,))]
    return t


def bert_large():
    """HF BertModel for bert-large-uncased (vocab 30522, hidden 1024, 24 layers,
    intermediate 4096, 512 positions, 2 token types), with the pooler and without the
    pre-training heads. nn.Linear weights are (out, in)."""
    h, inter = 1024, 4096
    e = "embeddings."
    t = [(e + "word_embeddings.weight", (30522, h)), (e + "position_embeddings.weight", (512, h)),
         (e + "token_type_embeddings.weight", (2, h)),
         (e + "LayerNorm.weight", (h,)), (e + "LayerNorm.bias", (h,))]
    for i in range(24):
        p = f"encoder.layer.{i}."
        for m in ("query", "key", "value"):
            t += [(p + f"attention.self.{m}.weight", (h, h)), (p + f"attention.self.{m}.bias", (h,))]
        t += [(p + "attention.output.dense.weight", (h, h)), (p + "attention.output.dense.bias", (h,)),
              (p + "attention.output.LayerNorm.weight", (h,)), (p + "attention.output.LayerNorm.bias", (h,)),
              (p + "intermediate.dense.weight", (inter, h)), (p + "intermediate.dense.bias", (inter,)),
              (p + "output.dense.weight", (h, inter)), (p + "output.dense.bias", (h,)),
              (p + "output.LayerNorm.weight", (h,)), (p + "output.LayerNorm.bias", (h,))]
    t += [("pooler.dense.weight", (h, h)), ("pooler.dense.bias", (h,))]
    return t


def gpt2():
    """HF GPT2Model "gpt2" (124M: vocab 50257, 1024 positions, width 768, 12 layers); the
    LM head is tied to wte, so it adds no tensor. GPT-2's Conv1D weights are (in, out)."""
    d = 768
    t = [("wte.weight", (50257, d)), ("wpe.weight", (1024, d))]
    for i in range(12):
        p = f"h.{i}."
        t += [(p + "ln_1.weight", (d,)), (p + "ln_1.bias", (d,)),
              (p + "attn.c_attn.weight", (d, 3 * d)), (p + "attn.c_attn.bias", (3 * d,)),
              (p + "attn.c_proj.weight", (d, d)), (p + "attn.c_proj.bias", (d,)),
              (p + "ln_2.weight", (d,)), (p + "ln_2.bias", (d,)),
              (p + "mlp.c_fc.weight", (d, 4 * d)), (p + "mlp.c_fc.bias", (4 * d,)),
              (p + "mlp.c_proj.weight", (4 * d, d)), (p + "mlp.c_proj.bias", (d,))]
    t += [("ln_f.weight", (d,)), ("ln_f.bias", (d,))]
    return t


MODELS = {
    "resnet50": (resnet50, "torchvision.models.resnet50 (v1.5), 1000 classes"),
    "bert-large": (bert_large, "HF BertModel bert-large-uncased, with pooler, no pre-training heads"),
    "gpt2": (gpt2, "HF GPT2Model gpt2 (124M), LM head tied to wte"),
}


def numel(shape):
    n = 1
    for s in shape:
        n *= s
    return n


def load(path):
    """Reads a table back: [(name, shape)], as gradcomm-bench does."""
    out = []
    with open(path) as f:
        for line in f:
            line = line.split("#", 1)[0].split()
            if line:
                out.append((line[0], tuple(int(x) for x in line[1:])))
    return out


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    for name, (build, source) in MODELS.items():
        tensors = build()
        params = sum(numel(s) for _, s in tensors)
        params_1d = sum(numel(s) for _, s in tensors if len(s) == 1)
        with open(os.path.join(here, name + ".txt"), "w") as f:
            f.write(f"# {name}: {source}\n")
            f.write(f"# tensors {len(tensors)}, parameters {params}, in 1-D tensors {params_1d}\n")
            f.write("# one parameter tensor per line, in named_parameters() order: name dims...\n")
            for tname, shape in tensors:
                f.write(tname + " " + " ".join(str(s) for s in shape) + "\n")
        print(f"{name}: {len(tensors)} tensors, {params} parameters, {params_1d} in 1-D tensors")
    return 0


if __name__ == "__main__":
    sys.exit(main())
