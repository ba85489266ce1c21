"""minBERT vs transformers.BertModel (SDPA attention): training and inference samples/s.

Both models hold the same all-MiniLM-L6-v2 weights and see the same batches (32 x 64 tokens); steps
of the two are interleaved in one process, so machine load hits both alike, and the median of the
timed steps after warm-up is reported.

    python benchmarks/encoder_speed.py            # a table
    python benchmarks/encoder_speed.py --json     # one JSON object
    python benchmarks/encoder_speed.py --device cuda --bf16
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from typing import Callable

import torch

from mtbert import DEFAULT_ENCODER, load_encoder
from mtbert.model.pretrained import resolve_source


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--encoder", default=DEFAULT_ENCODER, help="any load_encoder source except 'tiny'")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--steps", type=int, default=15, help="timed steps per model and mode (median taken)")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (CUDA)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p.parse_args()


def machine(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_step(model: torch.nn.Module, batch: dict, device: torch.device, bf16: bool) -> Callable[[], None]:
    opt = torch.optim.AdamW(model.parameters(), lr=2e-5, weight_decay=0.01, fused=True)

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out = model(**batch)
            # Touch both outputs so that every parameter, the pooler included, gets a gradient.
            loss = out.pooler_output.float().pow(2).mean() + out.last_hidden_state.float().pow(2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return step


def infer_step(model: torch.nn.Module, batch: dict, device: torch.device, bf16: bool) -> Callable[[], None]:
    def step() -> None:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            model(**batch)

    return step


def interleaved_medians(steps: dict[str, Callable[[], None]], n: int, warmup: int, device: torch.device) -> dict:
    for _ in range(warmup):
        for f in steps.values():
            f()
    times: dict[str, list[float]] = {k: [] for k in steps}
    names = list(steps)
    for i in range(n):
        for name in names if i % 2 == 0 else names[::-1]:  # alternate who goes first
            sync(device)
            t = time.perf_counter()
            steps[name]()
            sync(device)
            times[name].append(time.perf_counter() - t)
    return {k: statistics.median(v) for k, v in times.items()}


def main() -> None:
    args = parse_args()
    import transformers

    device = torch.device(args.device)
    if args.bf16 and device.type != "cuda":
        raise SystemExit("--bf16 is for CUDA; on the CPU both models run in fp32")
    mini, _ = load_encoder(args.encoder)
    hf = transformers.BertModel.from_pretrained(str(resolve_source(args.encoder)), attn_implementation="sdpa")
    mini.to(device)
    hf.to(device)
    g = torch.Generator().manual_seed(args.seed)
    ids = torch.randint(1000, mini.config.vocab_size, (args.batch_size, args.seq_len), generator=g)
    ids[:, 0], ids[:, -1] = 101, 102  # [CLS] ... [SEP]
    batch = {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device)}

    mini.train()
    hf.train()
    train = interleaved_medians(
        {"minbert": train_step(mini, batch, device, args.bf16), "hf": train_step(hf, batch, device, args.bf16)},
        args.steps, args.warmup, device,
    )
    mini.eval()
    hf.eval()
    infer = interleaved_medians(
        {"minbert": infer_step(mini, batch, device, args.bf16), "hf": infer_step(hf, batch, device, args.bf16)},
        args.steps, args.warmup, device,
    )
    b = args.batch_size
    result = {
        "minbert_train_sps": round(b / train["minbert"], 2),
        "hf_train_sps": round(b / train["hf"], 2),
        "minbert_infer_sps": round(b / infer["minbert"], 2),
        "hf_infer_sps": round(b / infer["hf"], 2),
        "train_ratio": round(train["hf"] / train["minbert"], 4),
        "infer_ratio": round(infer["hf"] / infer["minbert"], 4),
        "device": f"{device.type}: {machine(device)}",
        "dtype": "bf16 autocast" if args.bf16 else "fp32",
        "batch_size": b,
        "seq_len": args.seq_len,
        "timed_steps": args.steps,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }
    if args.json:
        print(json.dumps(result))
        return
    print(f"encoder {args.encoder}, batch {b} x {args.seq_len} tokens, {result['dtype']}, {result['device']}")
    print(f"{'':10}{'minBERT':>12}{'HF sdpa':>12}{'ratio':>8}")
    for mode in ("train", "infer"):
        print(
            f"{mode + ' sps':10}{result[f'minbert_{mode}_sps']:>12}{result[f'hf_{mode}_sps']:>12}"
            f"{result[f'{mode}_ratio']:>8}"
        )


if __name__ == "__main__":
    main()
