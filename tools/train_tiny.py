"""Train the tiny Gemma 3n preset's text decoder on Python's own docs: the demo model.

    python tools/train_tiny.py [--out DIR] [--steps N] [--seed S] [--threads T]

Random weights make noise, and parity on near-uniform logits proves little. This starts
from ``converters.tiny``'s ``tiny`` preset (every feature: AltUp, LAuReL, PLE, KV sharing,
sparse FFNs, sliding/full attention, softcap; same architecture, same tokenizer) and trains
the text decoder for a few minutes on one CPU core on ``pydoc_data.topics`` (shipped with
Python, so no download), until its greedy continuation reads like the docs. The vision and
audio towers (and their embedders) are left as the preset made them, random but perturbed,
so every modality still runs.

Data: the topics' paragraphs in sorted-key order, duplicates dropped (the big "compound"
and "specialnames" topics repeat others verbatim); every 20th unique paragraph is held out.
Training rows are ``<bos>`` + a random 127-token window of the training stream; three rows in
sixteen are instead a chat turn ("Tell me about <topic title>." or "What does the for
statement do?" -> the topic's first paragraph, in the tokenizer's chat template) so a chat
prompt gets an answer and an ``<end_of_turn>``. The held-out text is written beside the checkpoint (``heldout.txt``) so
tests measure on exactly what training never saw, whatever Python runs them.

Reproducible: seeded data order and init, ``torch.use_deterministic_algorithms``, a fixed
thread count (default 1: one thread is the fastest choice on a shared 2-core machine, where
a second OpenMP thread spins against other jobs and made a step ~8x slower; 1 and 2 threads
gave the same bytes in a 20-step check). ``training.json`` records the sha256 of every
file; the same Python (pydoc topics change between releases), torch version and CPU kind
reproduce ``model.safetensors`` byte for byte (checked by running it twice).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_OUT = REPO / "converters" / "data" / "tiny_trained"
HELDOUT_EVERY = 20  # every 20th unique paragraph (offset 10) is validation: ~5% of the text
HELDOUT_OFFSET = 10
SEQ = 128
BATCH = 16
CHAT_ROWS = 3  # of BATCH rows per step are chat turns (enough to learn to end a turn)
EVAL_EVERY = 50
COPIED = (  # files taken unchanged from the preset checkpoint
    "config.json",
    "generation_config.json",
    "tokenizer.model",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "preprocessor_config.json",
    "processor_config.json",
    "chat_template.jinja",
)


# --- data ------------------------------------------------------------------------------


def corpus_split() -> tuple[list[tuple[str, list[str]]], list[str]]:
    """(training topics as (key, paragraphs), held-out paragraphs), deterministic."""
    from pydoc_data import topics

    seen: set[str] = set()
    train: list[tuple[str, list[str]]] = []
    heldout: list[str] = []
    n = 0
    for key in sorted(topics.topics):
        kept = []
        for para in topics.topics[key].split("\n\n"):
            if not para.strip() or para in seen:
                continue
            seen.add(para)
            (heldout if n % HELDOUT_EVERY == HELDOUT_OFFSET else kept).append(para)
            n += 1
        if kept:
            train.append((key, kept))
    return train, heldout


def questions(title: str) -> tuple[str, str]:
    """Two ways a user asks about a topic: its title verbatim, and as people type it."""
    plain = title.replace('"', "")
    if plain.startswith("The "):
        plain = "the " + plain[4:]
    # 'The "for" statement' -> "What does the for statement do?", the demo's kind of prompt.
    asked = f"What does {plain} do?" if plain.endswith(" statement") else f"Explain {plain}."
    return f"Tell me about {title}.", asked


def chat_turns(train: list[tuple[str, list[str]]]) -> list[str]:
    """User/model exchanges for each topic whose title and first paragraph were kept."""
    turns = []
    for _, paras in train:
        head = paras[0].split("\n")
        # A topic opens with its title underlined by '*' and then its first paragraph.
        if len(paras) < 2 or len(head) != 2 or set(head[1]) != {"*"}:
            continue
        for user in questions(head[0]):
            answer = paras[1].strip()
            turns.append(f"<start_of_turn>user\n{user}<end_of_turn>\n<start_of_turn>model\n{answer}<end_of_turn>\n")
    return turns


def encode_data(sp, train, heldout):
    """Token tensors: the training stream, the chat rows (padded, -100 labels) and held-out windows."""
    import torch

    from converters.tiny import BOS_ID, EOS_ID, PAD_ID

    stream: list[int] = []
    for _, paras in train:
        stream += sp.encode("\n\n".join(paras)) + [EOS_ID]
    chats = [[BOS_ID] + sp.encode(t)[: SEQ - 1] for t in chat_turns(train)]
    chat_ids = torch.full((len(chats), SEQ), PAD_ID, dtype=torch.long)
    chat_labels = torch.full((len(chats), SEQ), -100, dtype=torch.long)
    for i, c in enumerate(chats):
        chat_ids[i, : len(c)] = torch.tensor(c)
        chat_labels[i, : len(c)] = torch.tensor(c)
    val = heldout_windows(sp, "\n\n".join(heldout))
    return torch.tensor(stream), (chat_ids, chat_labels), val


def heldout_windows(sp, text: str):
    """Non-overlapping rows of <bos> + 127 held-out tokens, as training sees text."""
    import torch

    from converters.tiny import BOS_ID

    ids = sp.encode(text)
    n = len(ids) // (SEQ - 1)
    rows = torch.tensor(ids[: n * (SEQ - 1)]).view(n, SEQ - 1)
    return torch.cat([torch.full((n, 1), BOS_ID), rows], dim=1)


def sample_batch(stream, chat, gen):
    import torch

    from converters.tiny import BOS_ID

    starts = torch.randint(0, len(stream) - SEQ, (BATCH - CHAT_ROWS,), generator=gen)
    docs = torch.stack([stream[s : s + SEQ - 1] for s in starts.tolist()])
    docs = torch.cat([torch.full((len(docs), 1), BOS_ID), docs], dim=1)
    pick = torch.randint(0, len(chat[0]), (CHAT_ROWS,), generator=gen)
    return torch.cat([docs, chat[0][pick]]), torch.cat([docs, chat[1][pick]])


# --- model -----------------------------------------------------------------------------


def lm_loss(model, ids, labels):
    """Mean next-token cross-entropy (nats) of the full model's softcapped logits."""
    import torch.nn.functional as F

    logits = model(input_ids=ids).logits[:, :-1]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)


def evaluate(model, val, batch: int = 32) -> float:
    import torch

    total, count = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(val), batch):
            rows = val[i : i + batch]
            n = rows[:, 1:].numel()
            total += float(lm_loss(model, rows, rows)) * n
            count += n
    return total / count


def param_groups(model, weight_decay: float):
    """Text decoder only; no decay on vectors (norm gains, correct_output_scale, biases)."""
    decay, no_decay = [], []
    for p in model.model.language_model.parameters():
        (decay if p.ndim >= 2 else no_decay).append(p)
    for p in model.parameters():
        p.requires_grad_(False)
    for p in decay + no_decay:
        p.requires_grad_(True)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_at(step: int, steps: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * t)))  # cosine down to 10%


def health(model, val) -> dict:
    """What random init leaves degenerate, and whether logits are useful for parity."""
    import torch

    lm = model.model.language_model
    scales = [float(layer.altup.correct_output_scale.detach().abs().mean()) for layer in lm.layers]
    rows = val[:8]
    with torch.no_grad():
        logits = model(input_ids=rows).logits[:, :-1].float()
        table = lm.embed_tokens_per_layer.weight
        saved = table.detach().clone()
        table.zero_()
        no_ple = model(input_ids=rows).logits[:, :-1].float()
        table.copy_(saved)
    probs = logits.softmax(-1)
    top2 = probs.topk(2, dim=-1).values
    return {
        "correct_output_scale_mean_abs_per_layer": [round(s, 4) for s in scales],
        # Relative logit change when the PLE table is zeroed: PLE is live if this is large.
        "ple_table_zeroed_rel_logit_change": round(float((logits - no_ple).norm() / logits.norm()), 4),
        "ple_table_zeroed_top1_agreement": round(float((logits.argmax(-1) == no_ple.argmax(-1)).float().mean()), 4),
        "heldout_mean_top1_prob": round(float(top2[..., 0].mean()), 4),
        "heldout_mean_top1_top2_margin": round(float((top2[..., 0] - top2[..., 1]).mean()), 4),
        "heldout_mean_entropy_nats": round(float(-(probs * probs.clamp_min(1e-30).log()).sum(-1).mean()), 4),
        "heldout_max_abs_logit": round(float(logits.abs().max()), 3),
    }


def greedy(model, sp, text: str, n: int = 48, chat: bool = False) -> str:
    import torch

    from converters.tiny import BOS_ID, END_OF_TURN_ID, EOS_ID

    prompt = f"<start_of_turn>user\n{text}<end_of_turn>\n<start_of_turn>model\n" if chat else text
    ids = torch.tensor([[BOS_ID] + sp.encode(prompt)])
    with torch.no_grad():
        out = model.generate(
            input_ids=ids, max_new_tokens=n, do_sample=False, eos_token_id=[EOS_ID, END_OF_TURN_ID], pad_token_id=0
        )
    # Ids past the SentencePiece vocabulary (vision/audio specials) have no text.
    return sp.decode([i for i in out[0, ids.shape[1] :].tolist() if i < len(sp)])


# --- main ------------------------------------------------------------------------------


def _cpu_model() -> str:
    # Float results can depend on the SIMD kernels the CPU selects: part of the repro key.
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def train(out: Path, steps: int, seed: int, threads: int, lr: float, log=print) -> dict:
    import sentencepiece as spm
    import torch
    from safetensors.torch import save

    from converters.tiny import make_tiny_checkpoint
    from edge.fileio import atomic_write
    from transformers import Gemma3nForConditionalGeneration

    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    torch.manual_seed(seed)
    t0 = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        base = make_tiny_checkpoint(Path(tmp) / "base", seed=seed, preset="tiny")
        model = Gemma3nForConditionalGeneration.from_pretrained(base, dtype=torch.float32)
        files = {name: (base / name).read_bytes() for name in COPIED}
    sp = spm.SentencePieceProcessor(model_proto=files["tokenizer.model"])
    train_topics, heldout = corpus_split()
    stream, chat, val = encode_data(sp, train_topics, heldout)
    log(f"train tokens {len(stream)}, chat turns {len(chat[0])}, held-out windows {len(val)} x {SEQ}")

    warmup = max(1, steps // 20)
    opt = torch.optim.AdamW(param_groups(model, 0.01), lr=lr, betas=(0.9, 0.95), eps=1e-8)
    gen = torch.Generator().manual_seed(seed)
    curve = [{"step": 0, "val_loss": round(evaluate(model.eval(), val), 4)}]
    log(f"step 0 val {curve[0]['val_loss']:.3f}")
    model.train()
    train_losses: list[float] = []
    t_train = time.time()
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, lr, warmup)
        ids, labels = sample_batch(stream, chat, gen)
        loss = lm_loss(model, ids, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for g in opt.param_groups for p in g["params"]], 1.0)
        opt.step()
        train_losses.append(loss.item())
        if (step + 1) % EVAL_EVERY == 0 or step + 1 == steps:
            val_loss = evaluate(model.eval(), val)
            model.train()
            recent = train_losses[-EVAL_EVERY:]
            mean = round(sum(recent) / len(recent), 4)
            point = {"step": step + 1, "train_loss": mean, "val_loss": round(val_loss, 4)}
            curve.append(point)
            log(f"step {step + 1} train {point['train_loss']:.3f} val {val_loss:.3f} ({time.time() - t_train:.0f} s)")
    train_seconds = time.time() - t_train
    model.eval()

    # The tied head is the embedding; the real checkpoints do not store it either.
    state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items() if k != "lm_head.weight"}
    files["model.safetensors"] = save(dict(sorted(state.items())), metadata={"format": "pt"})
    files["heldout.txt"] = "\n\n".join(heldout).encode()
    vocab_size = len(sp)
    report = {
        "preset": "tiny",
        "seed": seed,
        "steps": steps,
        "batch": BATCH,
        "seq_len": SEQ,
        "chat_rows_per_batch": CHAT_ROWS,
        "optimizer": {"name": "AdamW", "peak_lr": lr, "betas": [0.9, 0.95], "weight_decay": 0.01,
                      "warmup_steps": warmup, "schedule": "linear warmup, cosine to 10%", "grad_clip": 1.0},
        "threads": threads,
        "train_seconds": round(train_seconds, 1),
        "total_seconds": round(time.time() - t0, 1),
        "train_tokens": len(stream),
        "heldout_tokens": int(val[:, 1:].numel()),
        "heldout_rule": (
            f"unique paragraphs of pydoc_data.topics (sorted keys), index % {HELDOUT_EVERY} == {HELDOUT_OFFSET}"
        ),
        "uniform_loss_nats": round(math.log(vocab_size), 4),
        "final_val_loss": curve[-1]["val_loss"],
        "final_val_over_uniform": round(curve[-1]["val_loss"] / math.log(vocab_size), 4),
        "curve": curve,
        "health": health(model, val),
        "samples": {
            "The \"for\" statement": greedy(model, sp, 'The "for" statement'),
            'chat: Tell me about The "while" statement.': greedy(
                model, sp, 'Tell me about The "while" statement.', chat=True
            ),
            "chat: What does the for statement do?": greedy(model, sp, "What does the for statement do?", chat=True),
        },
        "python": platform.python_version(),
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpu": _cpu_model(),
        "reproduce": f"tools/train_tiny.py --out DIR --steps {steps} --seed {seed} --threads {threads} --lr {lr}",
    }
    report["sha256"] = {name: hashlib.sha256(data).hexdigest() for name, data in sorted(files.items())}
    files["training.json"] = (json.dumps(report, indent=2, ensure_ascii=False) + "\n").encode()
    out.mkdir(parents=True, exist_ok=True)
    for name, data in sorted(files.items()):
        atomic_write(out / name, data)
    return report


def main(argv: list[str] | None = None) -> int:
    sys.path.insert(0, str(REPO))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"default: {DEFAULT_OUT.relative_to(REPO)}")
    parser.add_argument("--steps", type=int, default=450, help="optimizer steps (default 450)")
    parser.add_argument("--seed", type=int, default=0, help="init and data-order seed (default 0)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1); recorded in training.json")
    parser.add_argument("--lr", type=float, default=1e-2, help="peak learning rate (default 1e-2)")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.seed < 0 or args.threads < 1:
        print("error: --steps and --threads must be >= 1 and --seed >= 0", file=sys.stderr)
        return 2
    if args.out.exists() and not args.out.is_dir():
        print(f"error: {args.out} exists and is not a directory: pass a directory as --out", file=sys.stderr)
        return 2
    report = train(args.out, args.steps, args.seed, args.threads, args.lr)
    summary = {k: report[k] for k in ("final_val_loss", "uniform_loss_nats", "train_seconds", "samples")}
    print(json.dumps(summary, indent=2, ensure_ascii=False))
    print(args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
