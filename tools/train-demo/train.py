#!/usr/bin/python3
"""Train shoal's demo model: a tiny DeepSeek-V3-architecture checkpoint (models/demo/).

Everything from raw text to the saved Hugging Face folder, deterministic (fixed seeds):

  1. corpus     Debian's `fortunes` / `fortunes-min` cookie files (not the offensive ones) and the
                King James Bible from `bible-kjv-text` (read with the `bible` program), cleaned to
                ASCII, deduplicated, split into train / validation documents.
  2. tokenizer  byte-level BPE (GPT-2 pre-tokenizer regex) with 2048 ids, trained here; saved as a
                Hugging Face tokenizer.json + tokenizer_config.json (DeepSeek-V3 chat template).
  3. model      an own PyTorch implementation of DeepSeek-V3 (MLA with q_lora, sigmoid-routed MoE
                with e_score_correction_bias and group-limited top-k, shared expert, one MTP
                layer) following the conventions of DeepSeek's reference inference/model.py.
  4. save       config.json, model.safetensors (BF16, router bias F32), generation_config.json.
  5. golden     golden.json + golden.safetensors (prefill / decode / MTP logits) computed from the
                SAVED bf16 weights in float64, in the format of shared/fixtures/README.md.

Needs Debian's python3 with python3-torch and numpy (dev-only; shoal never needs PyTorch).
Scratch files (corpus, token ids, checkpoints) go to --work (default /tmp/train-demo), never
into the repository; only the final small files go to --out (default models/demo).

    /usr/bin/python3 tools/train-demo/train.py            # everything (about 12 minutes, one core)
    /usr/bin/python3 tools/train-demo/train.py --stage save   # re-save + golden from the checkpoint
"""
import argparse
import collections
import hashlib
import json
import math
import os
import random
import re
import struct
import subprocess
import sys
import time

# Thread count is fixed before torch loads: on a small shared machine, one BLAS/OpenMP thread
# is many times faster than two that contend with other processes (and it keeps runs bit-exact).
for _v in ('OMP_NUM_THREADS', 'OPENBLAS_NUM_THREADS', 'MKL_NUM_THREADS'):
    os.environ.setdefault(_v, os.environ.get('TRAIN_DEMO_THREADS', '1'))

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), '..', '..'))

BOS = '<｜begin▁of▁sentence｜>'
EOS = '<｜end▁of▁sentence｜>'
USER = '<｜User｜>'
ASSISTANT = '<｜Assistant｜>'
THINK = '<think>'
THINK_END = '</think>'
VOCAB_SIZE = 2048
BYTE_OFFSET = 2                       # ids 0, 1 are BOS / EOS; the 256 bytes follow
TAIL_SPECIALS = [USER, ASSISTANT, THINK, THINK_END]   # the last four ids
NUM_MERGES = VOCAB_SIZE - BYTE_OFFSET - 256 - len(TAIL_SPECIALS)

FORTUNE_DIR = '/usr/share/games/fortunes'
# Files that are pictures, non-English, or mostly code rather than prose.
FORTUNE_SKIP = {'art', 'ascii-art', 'translate-me', 'perl', 'linuxcookie'}

CONFIG = dict(
    vocab_size=VOCAB_SIZE,
    hidden_size=192,
    intermediate_size=512,
    moe_intermediate_size=48,
    num_hidden_layers=4,
    first_k_dense_replace=1,
    moe_layer_freq=1,
    num_attention_heads=4,
    num_key_value_heads=4,
    n_routed_experts=16,
    n_shared_experts=1,
    num_experts_per_tok=4,
    n_group=4,
    topk_group=2,
    routed_scaling_factor=2.5,
    q_lora_rank=96,
    kv_lora_rank=64,
    qk_nope_head_dim=32,
    qk_rope_head_dim=16,
    v_head_dim=32,
    rms_norm_eps=1e-6,
    rope_theta=10000.0,
    max_position_embeddings=2048,
    num_nextn_predict_layers=1,
)

GOLDEN_PROMPT = 'A wise man once said that the best way to find peace of mind is to'


def log(*a):
    print(time.strftime('%H:%M:%S'), *a, flush=True)


# ----------------------------------------------------------------------------------------------
# 1. Corpus
# ----------------------------------------------------------------------------------------------

ASCII_MAP = {
    '\u2018': "'", '\u2019': "'", '\u201c': '"', '\u201d': '"', '\u2013': '-', '\u2014': '--',
    '\u2026': '...', '\u00a0': ' ', '\u00e9': 'e', '\u00e8': 'e', '\u00ea': 'e', '\u00e0': 'a',
    '\u00e2': 'a', '\u00f4': 'o', '\u00fc': 'u', '\u00f6': 'o', '\u00e4': 'a', '\u00e7': 'c',
    '\u00ef': 'i', '\u00ee': 'i', '\u00fb': 'u', '\u00f1': 'n',
}


def to_ascii(text):
    text = ''.join(ASCII_MAP.get(c, c) for c in text)
    return text if all(ord(c) < 128 for c in text) else None


def clean_fortune(raw):
    """One cookie: tabs to spaces, trailing space cut, attribution lines unindented; None to drop."""
    text = to_ascii(raw)
    if text is None:
        return None
    lines = []
    for line in text.expandtabs(4).split('\n'):
        line = line.rstrip()
        stripped = line.strip()
        if stripped.startswith('--') or stripped.startswith('- '):
            line = '    ' + stripped          # attribution: one fixed indent
        elif len(line) - len(line.lstrip()) > 4:
            line = '    ' + stripped          # deep indents (verse, dialogue) to 4 spaces
        lines.append(line)
    text = '\n'.join(lines).strip('\n')
    if not text or len(text) > 1200:
        return None
    body = text.replace(' ', '').replace('\n', '')
    letters = sum(c.isalpha() for c in body)
    if len(body) < 10 or letters / len(body) < 0.7:   # pictures, tables, code
        return None
    if re.search(r'(.)\1{5,}', body):             # ---------- rules, ****** boxes
        return None
    return text


def read_fortunes():
    docs = []
    for name in sorted(os.listdir(FORTUNE_DIR)):
        path = os.path.join(FORTUNE_DIR, name)
        if '.' in name or name in FORTUNE_SKIP or not os.path.isfile(path):
            continue                           # .dat indexes, .u8 duplicates, off/ (not a file)
        with open(path, 'rb') as f:
            raw = f.read().decode('utf-8', errors='replace')
        for cookie in re.split(r'\n%\n', raw.replace('\r', '')):
            cookie = cookie.strip('%\n')
            c = clean_fortune(cookie)
            if c:
                docs.append(('fortune', c))
    return docs


def read_kjv():
    """The KJV via `bible`: one document per chapter, one verse per line, verse numbers dropped."""
    out = subprocess.run(['bible', '-l10000', 'gen1:1-rev22:21'], check=True, capture_output=True)
    text = out.stdout.decode('latin-1')
    docs, cur = [], []
    for line in text.split('\n'):
        m = re.match(r'^\s+\d+ (.*)$', line)
        if m:
            cur.append(m.group(1).strip())
        elif line.strip():                     # "Genesis 1" heading: a new chapter
            if cur:
                docs.append(cur)
            cur = []
    if cur:
        docs.append(cur)
    result = []
    for verses in docs:
        # Long chapters are cut into pieces of at most 12 verses, so documents stay short.
        for i in range(0, len(verses), 12):
            t = to_ascii('\n'.join(verses[i:i + 12]))
            if t:
                result.append(('kjv', t))
    return result


def build_corpus(work):
    docs = read_fortunes() + read_kjv()
    seen, uniq = set(), []
    for kind, text in docs:
        key = re.sub(r'\W+', ' ', text.lower()).strip()
        if key in seen:
            continue
        seen.add(key)
        uniq.append((kind, text))
    rng = random.Random(1234)
    rng.shuffle(uniq)
    n_val = max(50, len(uniq) // 50)           # 2% held out
    val, train = uniq[:n_val], uniq[n_val:]
    with open(os.path.join(work, 'corpus.json'), 'w') as f:
        json.dump({'train': train, 'val': val}, f)
    stats = collections.Counter(k for k, _ in uniq)
    chars = sum(len(t) for _, t in uniq)
    log(f'corpus: {len(uniq)} documents after dedupe ({dict(stats)}), {chars/1e6:.2f} M chars; '
        f'{len(train)} train / {len(val)} validation; dropped {len(docs) - len(uniq)} duplicates')
    return train, val


# ----------------------------------------------------------------------------------------------
# 2. Byte-level BPE tokenizer
# ----------------------------------------------------------------------------------------------

def bytes_to_unicode():
    """GPT-2's reversible byte -> printable character map (used by HF ByteLevel)."""
    bs = list(range(ord('!'), ord('~') + 1)) + list(range(ord('¡'), ord('¬') + 1)) + list(range(ord('®'), ord('ÿ') + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {b: chr(c) for b, c in zip(bs, cs)}


BYTE_CHARS = bytes_to_unicode()
# HF ByteLevel's GPT-2 regex; on ASCII text \p{L} is [A-Za-z] and \p{N} is [0-9] (the corpus is ASCII).
PRETOK = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?[A-Za-z]+| ?[0-9]+| ?[^\sA-Za-z0-9]+|\s+(?!\S)|\s+""")


def pretokenize(text):
    return [''.join(BYTE_CHARS[b] for b in w.encode('utf-8')) for w in PRETOK.findall(text)]


def train_bpe(texts, num_merges):
    """Classic BPE on pre-token counts with incremental pair statistics. Ties: smallest pair."""
    counts = collections.Counter()
    for t in texts:
        counts.update(pretokenize(t))
    words = [list(w) for w in counts]
    freqs = [counts[w] for w in counts]
    pair_count = collections.Counter()
    pair_where = collections.defaultdict(set)
    for i, (w, f) in enumerate(zip(words, freqs)):
        for a, b in zip(w, w[1:]):
            pair_count[(a, b)] += f
            pair_where[(a, b)].add(i)
    merges = []
    for _ in range(num_merges):
        if not pair_count:
            break
        best = min(pair_count.items(), key=lambda kv: (-kv[1], kv[0]))[0]
        if pair_count[best] < 2:
            break
        merges.append(best)
        a, b = best
        new = a + b
        for i in list(pair_where[best]):
            w, f = words[i], freqs[i]
            for p in zip(w, w[1:]):            # remove this word's old pairs
                pair_count[p] -= f
                if pair_count[p] <= 0:
                    del pair_count[p]
                pair_where[p].discard(i)
            j, out = 0, []
            while j < len(w):
                if j + 1 < len(w) and w[j] == a and w[j + 1] == b:
                    out.append(new)
                    j += 2
                else:
                    out.append(w[j])
                    j += 1
            words[i] = out
            for p in zip(out, out[1:]):
                pair_count[p] += f
                pair_where[p].add(i)
        pair_where.pop(best, None)
    return merges


class BPE:
    def __init__(self, merges):
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.vocab = {BOS: 0, EOS: 1}
        for b in range(256):
            self.vocab[BYTE_CHARS[b]] = BYTE_OFFSET + b
        for a, b in merges:
            self.vocab[a + b] = len(self.vocab)
        assert len(self.vocab) == VOCAB_SIZE - len(TAIL_SPECIALS), len(self.vocab)
        self.special = {t: VOCAB_SIZE - len(TAIL_SPECIALS) + i for i, t in enumerate(TAIL_SPECIALS)}
        self.special.update({BOS: 0, EOS: 1})
        self.id_to_tok = {i: t for t, i in self.vocab.items()}
        self.id_to_tok.update({i: t for t, i in self.special.items()})
        self.byte_dec = {c: b for b, c in BYTE_CHARS.items()}
        self.cache = {}

    def _word(self, w):
        if w in self.cache:
            return self.cache[w]
        parts = list(w)
        while len(parts) > 1:
            pairs = [(self.ranks.get((x, y), 1 << 30), k) for k, (x, y) in enumerate(zip(parts, parts[1:]))]
            r, k = min(pairs)
            if r == 1 << 30:
                break
            parts[k:k + 2] = [parts[k] + parts[k + 1]]
        ids = [self.vocab[p] for p in parts]
        self.cache[w] = ids
        return ids

    def encode(self, text):
        ids = []
        for w in pretokenize(text):
            ids.extend(self._word(w))
        return ids

    def decode(self, ids):
        out = bytearray()
        for i in ids:
            t = self.id_to_tok[i]
            if t in self.special:
                out.extend(t.encode('utf-8'))
            else:
                out.extend(self.byte_dec[c] for c in t)
        return out.decode('utf-8', errors='replace')


CHAT_TEMPLATE = (
    "{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}"
    "{% set ns = namespace(system_prompt='', is_first_sp=true) %}"
    "{%- for message in messages %}{%- if message['role'] == 'system' %}"
    "{%- if ns.is_first_sp %}{% set ns.system_prompt = ns.system_prompt + message['content'] %}{% set ns.is_first_sp = false %}"
    "{%- else %}{% set ns.system_prompt = ns.system_prompt + '\\n\\n' + message['content'] %}{%- endif %}"
    "{%- endif %}{%- endfor %}"
    "{{ bos_token }}{{ ns.system_prompt }}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{{ '<｜User｜>' + message['content'] }}{%- endif %}"
    "{%- if message['role'] == 'assistant' and message['content'] is not none %}"
    "{%- set content = message['content'] %}{%- if '</think>' in content %}{%- set content = content.split('</think>')[-1] %}{%- endif %}"
    "{{ '<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>' }}{%- endif %}"
    "{%- endfor -%}"
    "{% if add_generation_prompt %}{{ '<｜Assistant｜>' }}{% endif %}"
)


def save_tokenizer(bpe, merges, out):
    def added(i, content, special):
        return {'id': i, 'content': content, 'single_word': False, 'lstrip': False, 'rstrip': False,
                'normalized': not special, 'special': special}
    added_tokens = [added(0, BOS, True), added(1, EOS, True)]
    for t in TAIL_SPECIALS:
        added_tokens.append(added(bpe.special[t], t, False))
    tj = {
        'version': '1.0',
        'truncation': None,
        'padding': None,
        'added_tokens': added_tokens,
        'normalizer': None,
        'pre_tokenizer': {'type': 'ByteLevel', 'add_prefix_space': False, 'trim_offsets': True, 'use_regex': True},
        'post_processor': {'type': 'ByteLevel', 'add_prefix_space': True, 'trim_offsets': False, 'use_regex': True},
        'decoder': {'type': 'ByteLevel', 'add_prefix_space': True, 'trim_offsets': True, 'use_regex': True},
        'model': {
            'type': 'BPE', 'dropout': None, 'unk_token': None, 'continuing_subword_prefix': None,
            'end_of_word_suffix': None, 'fuse_unk': False, 'byte_fallback': False,
            'vocab': bpe.vocab, 'merges': [f'{a} {b}' for a, b in merges],
        },
    }
    with open(os.path.join(out, 'tokenizer.json'), 'w', encoding='utf-8') as f:
        json.dump(tj, f, ensure_ascii=False, indent=1)

    def tok(content):
        return {'__type': 'AddedToken', 'content': content, 'lstrip': False, 'normalized': True,
                'rstrip': False, 'single_word': False}
    cfg = {
        'add_bos_token': True,
        'add_eos_token': False,
        'bos_token': tok(BOS),
        'eos_token': tok(EOS),
        'pad_token': tok(EOS),
        'unk_token': None,
        'clean_up_tokenization_spaces': False,
        'legacy': True,
        'model_max_length': CONFIG['max_position_embeddings'],
        'sp_model_kwargs': {},
        'tokenizer_class': 'LlamaTokenizerFast',
        'chat_template': CHAT_TEMPLATE,
    }
    with open(os.path.join(out, 'tokenizer_config.json'), 'w', encoding='utf-8') as f:
        json.dump(cfg, f, ensure_ascii=False, indent=2)


CHAT_FORTUNE_ASKS = ['Tell me a fortune.', 'Say something wise.', 'Give me a quote.',
                     'Tell me something funny.', 'What is your advice?']
CHAT_KJV_ASKS = ['Quote a verse from the Bible.', 'Read me some scripture.']


def encode_docs(bpe, docs, seed):
    """Documents as BOS text EOS; about 1 in 12 wrapped as a chat turn (user asks, assistant
    answers with the document), so `shoal run --chat` has seen its template."""
    rng = random.Random(seed)
    sp = bpe.special
    out = []
    for kind, text in docs:
        if rng.random() < 1 / 12:
            ask = rng.choice(CHAT_FORTUNE_ASKS if kind == 'fortune' else CHAT_KJV_ASKS)
            out += [sp[BOS], sp[USER]] + bpe.encode(ask) + [sp[ASSISTANT]] + bpe.encode(text) + [sp[EOS]]
        else:
            out += [sp[BOS]] + bpe.encode(text) + [sp[EOS]]
    return np.array(out, dtype=np.int32)


# ----------------------------------------------------------------------------------------------
# 3. Model: DeepSeek-V3 after the reference inference/model.py
# ----------------------------------------------------------------------------------------------

class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_cos_sin(c, positions, dtype):
    d = c['qk_rope_head_dim']
    inv = 1.0 / (c['rope_theta'] ** (torch.arange(0, d, 2, dtype=torch.float64) / d))
    ang = positions.to(torch.float64)[:, None] * inv[None, :]          # [T, d/2]
    return ang.cos().to(dtype), ang.sin().to(dtype)


def apply_rope(x, cos, sin):
    """Rotate ADJACENT pairs (x[2i], x[2i+1]) (the reference's complex view). x: [B, T, H, d]."""
    xr = x.reshape(*x.shape[:-1], -1, 2)
    a, b = xr[..., 0], xr[..., 1]
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    return torch.stack([a * cos - b * sin, a * sin + b * cos], dim=-1).flatten(-2)


class MLA(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        H, n = c['hidden_size'], c['num_attention_heads']
        self.nope, self.rope, self.vd, self.kvr = c['qk_nope_head_dim'], c['qk_rope_head_dim'], c['v_head_dim'], c['kv_lora_rank']
        self.n = n
        self.q_a_proj = nn.Linear(H, c['q_lora_rank'], bias=False)
        self.q_a_layernorm = RMSNorm(c['q_lora_rank'], c['rms_norm_eps'])
        self.q_b_proj = nn.Linear(c['q_lora_rank'], n * (self.nope + self.rope), bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(H, self.kvr + self.rope, bias=False)
        self.kv_a_layernorm = RMSNorm(self.kvr, c['rms_norm_eps'])
        self.kv_b_proj = nn.Linear(self.kvr, n * (self.nope + self.vd), bias=False)
        self.o_proj = nn.Linear(n * self.vd, H, bias=False)
        self.scale = (self.nope + self.rope) ** -0.5   # no YaRN: rope_scaling is null

    def forward(self, x, cos, sin, mask):
        B, T, _ = x.shape
        q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x))).view(B, T, self.n, self.nope + self.rope)
        q_nope, q_pe = q.split([self.nope, self.rope], dim=-1)
        q_pe = apply_rope(q_pe, cos, sin)
        kv = self.kv_a_proj_with_mqa(x)
        latent, k_pe = kv.split([self.kvr, self.rope], dim=-1)
        k_pe = apply_rope(k_pe.unsqueeze(2), cos, sin)                    # shared by all heads
        kv = self.kv_b_proj(self.kv_a_layernorm(latent)).view(B, T, self.n, self.nope + self.vd)
        k_nope, v = kv.split([self.nope, self.vd], dim=-1)
        qq = torch.cat([q_nope, q_pe], dim=-1)
        k = torch.cat([k_nope, k_pe.expand(-1, -1, self.n, -1)], dim=-1)
        scores = torch.einsum('bshd,bthd->bhst', qq, k) * self.scale + mask
        p = scores.softmax(dim=-1)
        o = torch.einsum('bhst,bthd->bshd', p, v)
        return self.o_proj(o.reshape(B, T, self.n * self.vd))


class MLP(nn.Module):
    def __init__(self, H, I):
        super().__init__()
        self.gate_proj = nn.Linear(H, I, bias=False)
        self.up_proj = nn.Linear(H, I, bias=False)
        self.down_proj = nn.Linear(I, H, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class MoE(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        H, I, E = c['hidden_size'], c['moe_intermediate_size'], c['n_routed_experts']
        self.E, self.k = E, c['num_experts_per_tok']
        self.gate_weight = nn.Parameter(torch.empty(E, H))
        self.register_buffer('e_score_correction_bias', torch.zeros(E, dtype=torch.float32))
        # Routed experts stacked for speed; saved as experts.E.{gate,up,down}_proj.
        self.w_gate = nn.Parameter(torch.empty(E, I, H))
        self.w_up = nn.Parameter(torch.empty(E, I, H))
        self.w_down = nn.Parameter(torch.empty(E, H, I))
        self.shared_experts = MLP(H, I * c['n_shared_experts'])
        self.last_load = None

    def route(self, x):
        c = self.c
        scores = (x @ self.gate_weight.t()).sigmoid()
        with torch.no_grad():
            sel = scores + self.e_score_correction_bias.to(scores.dtype)     # bias selects only
            g = sel.view(-1, c['n_group'], self.E // c['n_group'])
            group_scores = g.topk(2, dim=-1)[0].sum(dim=-1)
            keep = group_scores.topk(c['topk_group'], dim=-1)[1]
            mask = torch.ones_like(group_scores, dtype=torch.bool).scatter_(1, keep, False)
            sel = g.masked_fill(mask.unsqueeze(-1), float('-inf')).flatten(1)
            idx = sel.topk(self.k, dim=-1)[1]
        w = scores.gather(1, idx)                                            # unbiased scores
        w = w / w.sum(dim=-1, keepdim=True) * c['routed_scaling_factor']
        return idx, w

    def forward(self, x):
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        idx, w = self.route(x)
        flat = idx.reshape(-1)
        order = flat.argsort(stable=True)
        counts = torch.bincount(flat, minlength=self.E)
        self.last_load = counts.detach()
        tok = order // self.k
        xs = x[tok]
        outs, start = [], 0
        for e, n in enumerate(counts.tolist()):
            if n:
                xe = xs[start:start + n]
                outs.append((F.silu(xe @ self.w_gate[e].t()) * (xe @ self.w_up[e].t())) @ self.w_down[e].t())
            start += n
        ys = torch.cat(outs) * w.reshape(-1)[order].unsqueeze(-1)
        y = torch.zeros_like(x).index_add_(0, tok, ys)
        return (y + self.shared_experts(x)).view(shape)


class DecoderLayer(nn.Module):
    def __init__(self, c, moe):
        super().__init__()
        self.input_layernorm = RMSNorm(c['hidden_size'], c['rms_norm_eps'])
        self.self_attn = MLA(c)
        self.post_attention_layernorm = RMSNorm(c['hidden_size'], c['rms_norm_eps'])
        self.mlp = MoE(c) if moe else MLP(c['hidden_size'], c['intermediate_size'])

    def forward(self, x, cos, sin, mask):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask)
        return x + self.mlp(self.post_attention_layernorm(x))


class MTPLayer(nn.Module):
    """model.layers.{L}: enorm, hnorm, eh_proj, a full (MoE) decoder layer, shared_head.norm.
    Embedding and head are the main model's (the copies are not stored)."""
    def __init__(self, c):
        super().__init__()
        H = c['hidden_size']
        self.enorm = RMSNorm(H, c['rms_norm_eps'])
        self.hnorm = RMSNorm(H, c['rms_norm_eps'])
        self.eh_proj = nn.Linear(2 * H, H, bias=False)
        self.layer = DecoderLayer(c, moe=True)
        self.shared_head_norm = RMSNorm(H, c['rms_norm_eps'])


class DeepseekV3(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.c = c
        self.embed_tokens = nn.Embedding(c['vocab_size'], c['hidden_size'])
        self.layers = nn.ModuleList([DecoderLayer(c, moe=i >= c['first_k_dense_replace'])
                                     for i in range(c['num_hidden_layers'])])
        self.norm = RMSNorm(c['hidden_size'], c['rms_norm_eps'])
        self.lm_head = nn.Linear(c['hidden_size'], c['vocab_size'], bias=False)
        self.mtp = MTPLayer(c)

    def moe_layers(self):
        return [m for m in self.modules() if isinstance(m, MoE)]

    @staticmethod
    def causal_mask(T, dtype):
        return torch.full((T, T), float('-inf'), dtype=dtype).triu(1)

    def forward_main(self, tokens):
        """tokens [B, T] at positions 0..T-1 -> final hidden state after model.norm [B, T, H]."""
        T = tokens.shape[1]
        x = self.embed_tokens(tokens)
        cos, sin = rope_cos_sin(self.c, torch.arange(T), x.dtype)
        mask = self.causal_mask(T, x.dtype)
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        return self.norm(x)

    def forward_mtp(self, h, next_emb):
        """h [B, n, H] (after model.norm), next_emb [B, n, H] = emb(token[i+1]); positions 0..n-1."""
        m = self.mtp
        n = h.shape[1]
        x = m.eh_proj(torch.cat([m.enorm(next_emb), m.hnorm(h)], dim=-1))
        cos, sin = rope_cos_sin(self.c, torch.arange(n), x.dtype)
        x = m.layer(x, cos, sin, self.causal_mask(n, x.dtype))
        return self.lm_head(m.shared_head_norm(x))


def init_weights(model, seed):
    g = torch.Generator().manual_seed(seed)
    for name, p in model.named_parameters():
        if name.endswith('weight') and p.dim() == 1:
            nn.init.ones_(p)
        else:
            std = 0.02
            if name.endswith('o_proj.weight') or name.endswith('down_proj.weight') or 'w_down' in name:
                std = 0.02 / math.sqrt(2 * (model.c['num_hidden_layers'] + 1))
            with torch.no_grad():
                p.copy_(torch.randn(p.shape, generator=g) * std)


# ----------------------------------------------------------------------------------------------
# 4. Hugging Face names and safetensors
# ----------------------------------------------------------------------------------------------

def hf_state(model):
    """name -> tensor in HF DeepSeek-V3 checkpoint naming (float32, bias kept float32)."""
    c = model.c
    L = c['num_hidden_layers']
    out = {'model.embed_tokens.weight': model.embed_tokens.weight}

    def layer(prefix, lyr):
        a = lyr.self_attn
        out[f'{prefix}.input_layernorm.weight'] = lyr.input_layernorm.weight
        out[f'{prefix}.post_attention_layernorm.weight'] = lyr.post_attention_layernorm.weight
        for nm in ['q_a_proj', 'q_a_layernorm', 'q_b_proj', 'kv_a_proj_with_mqa', 'kv_a_layernorm', 'kv_b_proj', 'o_proj']:
            out[f'{prefix}.self_attn.{nm}.weight'] = getattr(a, nm).weight
        m = lyr.mlp
        if isinstance(m, MLP):
            for nm in ['gate_proj', 'up_proj', 'down_proj']:
                out[f'{prefix}.mlp.{nm}.weight'] = getattr(m, nm).weight
        else:
            out[f'{prefix}.mlp.gate.weight'] = m.gate_weight
            out[f'{prefix}.mlp.gate.e_score_correction_bias'] = m.e_score_correction_bias
            for e in range(m.E):
                out[f'{prefix}.mlp.experts.{e}.gate_proj.weight'] = m.w_gate[e]
                out[f'{prefix}.mlp.experts.{e}.up_proj.weight'] = m.w_up[e]
                out[f'{prefix}.mlp.experts.{e}.down_proj.weight'] = m.w_down[e]
            for nm in ['gate_proj', 'up_proj', 'down_proj']:
                out[f'{prefix}.mlp.shared_experts.{nm}.weight'] = getattr(m.shared_experts, nm).weight

    for i, lyr in enumerate(model.layers):
        layer(f'model.layers.{i}', lyr)
    t = model.mtp
    out[f'model.layers.{L}.enorm.weight'] = t.enorm.weight
    out[f'model.layers.{L}.hnorm.weight'] = t.hnorm.weight
    out[f'model.layers.{L}.eh_proj.weight'] = t.eh_proj.weight
    out[f'model.layers.{L}.shared_head.norm.weight'] = t.shared_head_norm.weight
    layer(f'model.layers.{L}', t.layer)
    out['model.norm.weight'] = model.norm.weight
    out['lm_head.weight'] = model.lm_head.weight
    return {k: v.detach() for k, v in out.items()}


def load_hf_state(model, tensors):
    """Inverse of hf_state (copies into the model's parameters)."""
    names = hf_state(model)
    missing = set(names) - set(tensors)
    extra = set(tensors) - set(names)
    assert not missing and not extra, (missing, extra)
    with torch.no_grad():
        for k, dst in names.items():
            src = tensors[k]
            assert tuple(src.shape) == tuple(dst.shape), (k, src.shape, dst.shape)
            dst.copy_(src.to(dst.dtype))   # views into the parameters: writes through


def bf16_bits(t):
    """float32 tensor -> bf16 bit patterns, round to nearest even (what torch's .bfloat16() does)."""
    return t.contiguous().to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)


def write_safetensors(path, tensors, metadata=None):
    """tensors: name -> (dtype string, shape, raw bytes). Names sorted, 8-byte aligned header."""
    header, blobs, off = {}, [], 0
    if metadata:
        header['__metadata__'] = metadata
    for name in sorted(tensors):
        dt, shape, raw = tensors[name]
        header[name] = {'dtype': dt, 'shape': list(shape), 'data_offsets': [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header, separators=(',', ':')).encode('utf-8')
    h += b' ' * ((8 - len(h) % 8) % 8)
    with open(path, 'wb') as f:
        f.write(struct.pack('<Q', len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def read_safetensors(path):
    with open(path, 'rb') as f:
        n = struct.unpack('<Q', f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == '__metadata__':
            continue
        a, b = info['data_offsets']
        raw = data[a:b]
        if info['dtype'] == 'BF16':
            bits = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
            arr = bits.view(np.float32)
        elif info['dtype'] == 'F32':
            arr = np.frombuffer(raw, dtype=np.float32)
        else:
            raise ValueError(info['dtype'])
        out[name] = torch.from_numpy(arr.copy().reshape(info['shape']))
    return out


def hf_config():
    c = CONFIG
    return {
        'architectures': ['DeepseekV3ForCausalLM'],
        'model_type': 'deepseek_v3',
        'vocab_size': c['vocab_size'],
        'hidden_size': c['hidden_size'],
        'intermediate_size': c['intermediate_size'],
        'moe_intermediate_size': c['moe_intermediate_size'],
        'num_hidden_layers': c['num_hidden_layers'],
        'num_nextn_predict_layers': c['num_nextn_predict_layers'],
        'num_attention_heads': c['num_attention_heads'],
        'num_key_value_heads': c['num_key_value_heads'],
        'n_shared_experts': c['n_shared_experts'],
        'n_routed_experts': c['n_routed_experts'],
        'ep_size': 1,
        'routed_scaling_factor': c['routed_scaling_factor'],
        'kv_lora_rank': c['kv_lora_rank'],
        'q_lora_rank': c['q_lora_rank'],
        'qk_rope_head_dim': c['qk_rope_head_dim'],
        'v_head_dim': c['v_head_dim'],
        'qk_nope_head_dim': c['qk_nope_head_dim'],
        'topk_method': 'noaux_tc',
        'n_group': c['n_group'],
        'topk_group': c['topk_group'],
        'num_experts_per_tok': c['num_experts_per_tok'],
        'moe_layer_freq': c['moe_layer_freq'],
        'first_k_dense_replace': c['first_k_dense_replace'],
        'norm_topk_prob': True,
        'scoring_func': 'sigmoid',
        'hidden_act': 'silu',
        'max_position_embeddings': c['max_position_embeddings'],
        'initializer_range': 0.02,
        'rms_norm_eps': c['rms_norm_eps'],
        'use_cache': True,
        'pad_token_id': None,
        'bos_token_id': 0,
        'eos_token_id': 1,
        'tie_word_embeddings': False,
        'rope_theta': c['rope_theta'],
        'rope_scaling': None,
        'attention_bias': False,
        'attention_dropout': 0.0,
        'torch_dtype': 'bfloat16',
        'transformers_version': '4.46.3',
    }


def save_model(model, out):
    tensors = {}
    for name, t in hf_state(model).items():
        t = t.float().contiguous()
        if name.endswith('e_score_correction_bias'):
            tensors[name] = ('F32', t.shape, t.numpy().astype('<f4').tobytes())
        else:
            tensors[name] = ('BF16', t.shape, bf16_bits(t).astype('<u2').tobytes())
    write_safetensors(os.path.join(out, 'model.safetensors'), tensors, {'format': 'pt'})
    with open(os.path.join(out, 'config.json'), 'w') as f:
        json.dump(hf_config(), f, indent=2)
    with open(os.path.join(out, 'generation_config.json'), 'w') as f:
        json.dump({'_from_model_config': True, 'bos_token_id': 0, 'eos_token_id': 1,
                   'do_sample': True, 'temperature': 0.7, 'top_p': 0.9,
                   'transformers_version': '4.46.3'}, f, indent=2)
    n_params = sum(int(np.prod(s)) for _, s, _ in tensors.values())
    return n_params, os.path.getsize(os.path.join(out, 'model.safetensors'))


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------

def losses(model, batch, mtp_weight=0.3):
    """batch [B, T+1]: main loss predicts t+1 over T positions; MTP predicts t+2 over T-1."""
    x, y = batch[:, :-1], batch[:, 1:]
    h = model.forward_main(x)
    V = model.c['vocab_size']
    main = F.cross_entropy(model.lm_head(h).reshape(-1, V), y.reshape(-1))
    T = x.shape[1]
    mtp_logits = model.forward_mtp(h[:, :T - 1], model.embed_tokens(x[:, 1:T]))
    mtp = F.cross_entropy(mtp_logits.reshape(-1, V), batch[:, 2:].reshape(-1))
    return main, mtp, main + mtp_weight * mtp


@torch.no_grad()
def evaluate(model, val_windows):
    model.eval()
    tm, tt = 0.0, 0.0
    for i in range(0, len(val_windows), 16):
        m, t, _ = losses(model, val_windows[i:i + 16])
        tm += m.item() * len(val_windows[i:i + 16])
        tt += t.item() * len(val_windows[i:i + 16])
    model.train()
    return tm / len(val_windows), tt / len(val_windows)


@torch.no_grad()
def sample(model, bpe, prompt, n=40, temperature=0.7, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = [0] + bpe.encode(prompt)
    for _ in range(n):
        logits = model.lm_head(model.forward_main(torch.tensor([ids])))[0, -1] / temperature
        nxt = torch.multinomial(logits.softmax(-1), 1, generator=g).item()
        if nxt == 1:
            break
        ids.append(nxt)
    return bpe.decode(ids[1:])


def train(model, train_ids, val_ids, args, bpe):
    T, B = args.seq_len, args.batch
    tr = torch.from_numpy(train_ids.astype(np.int64))
    va = torch.from_numpy(val_ids.astype(np.int64))
    nval = min(64, (len(va) - 1) // (T + 1))
    val_windows = torch.stack([va[i * (T + 1):(i + 1) * (T + 1)] for i in range(nval)])
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and 'embed' not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.dim() >= 2 and 'embed' not in n)]
    opt = torch.optim.AdamW([{'params': decay, 'weight_decay': 0.1}, {'params': no_decay, 'weight_decay': 0.0}],
                            lr=args.lr, betas=(0.9, 0.95), eps=1e-8)
    g = torch.Generator().manual_seed(args.seed + 1)
    moes = model.moe_layers()
    t0 = time.time()
    for step in range(1, args.steps + 1):
        if step <= args.warmup:
            lr = args.lr * step / args.warmup
        else:
            p = (step - args.warmup) / max(1, args.steps - args.warmup)
            lr = args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * p)))
        for grp in opt.param_groups:
            grp['lr'] = lr
        starts = torch.randint(0, len(tr) - T - 1, (B,), generator=g)
        batch = torch.stack([tr[s:s + T + 1] for s in starts.tolist()])
        main, mtp, loss = losses(model, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():                  # DeepSeek-V3's auxiliary-loss-free balancing
            for m in moes:
                load = m.last_load.float()
                m.e_score_correction_bias += args.bias_gamma * torch.sign(load.mean() - load)
        if step % 50 == 0 or step == 1:
            el = time.time() - t0
            log(f'step {step}/{args.steps} lr {lr:.2e} loss {main.item():.3f} mtp {mtp.item():.3f} '
                f'{el / step:.2f} s/step, eta {el / step * (args.steps - step) / 60:.1f} min')
        if step % args.eval_every == 0 or step == args.steps:
            vm, vt = evaluate(model, val_windows)
            log(f'  validation: main {vm:.3f} nats/token (ppl {math.exp(vm):.1f}), mtp {vt:.3f}')
            log('  sample:', repr(sample(model, bpe, 'The Lord is', 30)))
    vm, vt = evaluate(model, val_windows)
    return {'val_loss': vm, 'val_mtp_loss': vt, 'val_tokens': int(val_windows.numel() - nval),
            'train_seconds': time.time() - t0}


# ----------------------------------------------------------------------------------------------
# 5. Golden logits from the saved weights
# ----------------------------------------------------------------------------------------------

@torch.no_grad()
def golden(out, bpe):
    c = CONFIG
    model = DeepseekV3(c)
    load_hf_state(model, read_safetensors(os.path.join(out, 'model.safetensors')))
    model = model.double()
    prompt = [0] + bpe.encode(GOLDEN_PROMPT)
    L = len(prompt)
    lm = lambda ids: model.lm_head(model.forward_main(torch.tensor([ids])))[0]
    prefill = lm(prompt)
    # Decode: the greedy continuation, 4 tokens; logits after each (full recompute == KV cache).
    seq, decode_ids, decode_rows = list(prompt), [], []
    nxt = int(prefill[-1].argmax())
    for _ in range(4):
        decode_ids.append(nxt)
        seq.append(nxt)
        row = lm(seq)[-1]
        decode_rows.append(row)
        nxt = int(row.argmax())
    decode = torch.stack(decode_rows)
    # MTP: row i uses h_i and emb(prompt[i+1]), the embedding zeroed at position 0.
    h = model.forward_main(torch.tensor([prompt]))[:, :L - 1]
    emb = model.embed_tokens(torch.tensor([prompt[1:]]))
    emb[:, 0] = 0
    mtp = model.forward_mtp(h, emb)[0]
    # Margins, to see that float32 engines cannot flip an argmax or an expert choice.
    def margin(rows):
        top2 = rows.topk(2, dim=-1)[0]
        return float((top2[:, 0] - top2[:, 1]).min())
    tensors = {}
    for name, t in [('prefill_logits', prefill), ('decode_logits', decode), ('mtp_logits', mtp)]:
        t = t.float().contiguous()
        tensors[name] = ('F32', t.shape, t.numpy().astype('<f4').tobytes())
    write_safetensors(os.path.join(out, 'golden.safetensors'), tensors)
    g = {
        'prompt_text': GOLDEN_PROMPT,
        'prompt_token_ids': prompt,
        'decode_token_ids': decode_ids,
        'note': ('prefill_logits[i] are the logits after prompt_token_ids[0..i]; decode_logits[k] after also feeding '
                 'decode_token_ids[0..k] one at a time (the decode tokens are the greedy continuation); mtp_logits[i] '
                 "are the MTP module's logits at position i: eh_proj([enorm(emb(prompt_token_ids[i+1])); hnorm(h_i)]) "
                 "with h_i the main model's final hidden state after model.norm and the embedding zeroed at position 0 "
                 '(as vLLM and SGLang serve it), then the MTP decoder layer (causal, positions 0..), then '
                 'shared_head.norm and shared_head.head (= lm_head, the copy is not stored); it predicts the token '
                 'after prompt_token_ids[i+1]'),
        'computed_in': ("float64 from the checkpoint's stored values (bf16, router bias f32), by shoal's "
                        'tools/train-demo/train.py (an independent PyTorch implementation of DeepSeek-V3 following '
                        'the reference inference/model.py), stored as float32'),
        'greedy_prefill_argmax': [int(i) for i in prefill.argmax(-1)],
        'greedy_decode_argmax': [int(i) for i in decode.argmax(-1)],
        'greedy_mtp_argmax': [int(i) for i in mtp.argmax(-1)],
        'min_top2_margin': {'prefill': margin(prefill), 'decode': margin(decode), 'mtp': margin(mtp)},
    }
    with open(os.path.join(out, 'golden.json'), 'w') as f:
        json.dump(g, f, indent=2, ensure_ascii=False)
    # float32 recompute: how far a float32 engine may legitimately be.
    m32 = model.float()
    p32 = m32.lm_head(m32.forward_main(torch.tensor([prompt])))[0]
    log(f'golden: prompt {L} tokens, decode {decode_ids} ({bpe.decode(decode_ids)!r}); '
        f'float32 vs float64 max |diff| {float((p32.double() - prefill).abs().max()):.2e}; margins {g["min_top2_margin"]}')
    return g


def write_model_card(out, stats, g):
    c = hf_config()
    size = stats['safetensors_bytes']
    readme = f"""---
license: other
language: en
library_name: shoal
pipeline_tag: text-generation
---

# shoal demo model (DeepSeek-V3 architecture, {stats['parameters'] / 1e6:.2f} M parameters)

A very small language model with the **DeepSeek-V3 architecture**, trained from scratch by
[`tools/train-demo/train.py`](../../tools/train-demo/train.py) on public-domain and freely
licensed English text that Debian ships. It exists so that shoal can be tried and tested without
downloading a real checkpoint:

    node bin/shoal.js run --model models/demo --prompt "The Lord is" --max-tokens 40

It writes English-looking words and phrases in the style of the King James Bible and of fortune
cookies. It knows nothing and follows no instructions; do not use it for anything but testing.

## Architecture

Exactly the Hugging Face `DeepseekV3ForCausalLM` layout (`model_type: deepseek_v3`), only small:

| | |
| --- | --- |
| vocabulary | {c['vocab_size']} (byte-level BPE) |
| hidden size | {c['hidden_size']} |
| layers | {c['num_hidden_layers']} ({c['first_k_dense_replace']} dense, {c['num_hidden_layers'] - c['first_k_dense_replace']} MoE) + {c['num_nextn_predict_layers']} MTP layer (`model.layers.{c['num_hidden_layers']}`) |
| attention | MLA, {c['num_attention_heads']} heads, q_lora_rank {c['q_lora_rank']}, kv_lora_rank {c['kv_lora_rank']}, qk_nope {c['qk_nope_head_dim']}, qk_rope {c['qk_rope_head_dim']}, v {c['v_head_dim']}; RoPE theta {c['rope_theta']:g}, no YaRN |
| dense MLP | SwiGLU, intermediate {c['intermediate_size']} |
| MoE | {c['n_routed_experts']} routed experts (intermediate {c['moe_intermediate_size']}), top-{c['num_experts_per_tok']}, {c['n_group']} groups / top-{c['topk_group']} groups, sigmoid scores, `e_score_correction_bias` (noaux_tc), normalized weights x {c['routed_scaling_factor']}, {c['n_shared_experts']} shared expert |
| weights | BF16 (router biases F32), one file `model.safetensors`, {size:,} bytes |

The MTP layer stores `enorm`, `hnorm`, `eh_proj`, its decoder layer and `shared_head.norm`, but not
the copies `model.layers.{c['num_hidden_layers']}.embed_tokens.weight` and
`model.layers.{c['num_hidden_layers']}.shared_head.head.weight`: it was trained with the main
model's `model.embed_tokens` and `lm_head`, which is what published DeepSeek-V3 checkpoints copy
there.

## Training

- Data: {stats['train_tokens']:,} training tokens from {stats['documents']:,} documents
  (fortune cookies and KJV chapters in pieces of 12 verses), deduplicated; 2% of the documents held
  out for validation. About 1 in 12 documents is wrapped in the chat template (`<｜User｜>` asks
  for a fortune or a verse, `<｜Assistant｜>` answers), so `--chat` produces text too.
- {stats['steps']} steps of {stats['batch']} x {stats['seq_len']} tokens (AdamW, peak LR {stats['lr']}, cosine),
  loss = main + 0.3 x MTP, aux-loss-free expert balancing (router bias += 0.001 x sign(mean load - load)),
  {stats['train_seconds'] / 60:.0f} minutes on one CPU core.
- Validation loss (bf16 weights, {stats['val_tokens']:,} tokens): **{stats['bf16_val_loss']:.3f} nats/token**
  (perplexity {math.exp(stats['bf16_val_loss']):.1f}); MTP (token after next) {stats['bf16_val_mtp_loss']:.3f}.

Reproduce (Debian bookworm, `apt-get install python3-torch libopenblas0-pthread fortunes fortunes-min bible-kjv-text`):

    /usr/bin/python3 tools/train-demo/train.py

## Reference logits

`golden.json` / `golden.safetensors` hold prefill, decode and MTP logits for the prompt
{json.dumps(GOLDEN_PROMPT)} ({len(g['prompt_token_ids'])} tokens with BOS), computed in float64 by
the training script's own PyTorch implementation from the stored bf16 weights, in the format of
the golden fixtures; check them with `node bin/shoal.js golden models/demo`.

## Licence

The weights are derived from the texts below; see [LICENSE](LICENSE).

- King James Version of the Bible (1611), from Debian's `bible-kjv-text`: the text is in the public
  domain (Crown copyright applies in the United Kingdom only, and not to this use of it); the Debian
  package's own licence is "unrestricted use" (Chip Chapin's Bible Retrieval System).
- Fortune cookie files from Debian's `fortunes` and `fortunes-min` (fortune-mod 1.99.1), excluding
  the offensive set and the files `{"`, `".join(sorted(FORTUNE_SKIP))}`: distributed under the BSD licence
  of fortune-mod (Copyright (c) 1991 The Regents of the University of California). The cookies are
  short quotations from many sources collected over decades; the package does not record the
  copyright of individual quotations.
"""
    with open(os.path.join(out, 'README.md'), 'w', encoding='utf-8') as f:
        f.write(readme)
    lic = """The shoal demo model (models/demo) was trained on these texts:

1. The King James Version of the Bible, from Debian's bible-kjv-text package (4.38).
   The KJV text is in the public domain. The Debian package's copyright file says of the data:

        Bible Retrieval System
        Chip Chapin, Hewlett Packard Company
        This file is provided for unrestricted use provided that this
        legend is included on all tape media and as a part of the
        software program in whole or part.  Users may copy, modify or
        distribute this file at will.
                    -- Chip Chapin, September 4, 1989

        The copyright for the King James Version text of the Bible is expired since
        the translation was done in 1611 under King James the first of Great Britain.

2. The fortune cookie files of Debian's fortunes and fortunes-min packages (1:1.99.1-7.3),
   without the offensive set. They are distributed under fortune-mod's BSD licence:

        Copyright (c) 1991 The Regents of the University of California.
        All rights reserved.

        Redistribution and use in source and binary forms, with or without
        modification, are permitted provided that the following conditions
        are met:
        1. Redistributions of source code must retain the above copyright
           notice, this list of conditions and the following disclaimer.
        2. Redistributions in binary form must reproduce the above copyright
           notice, this list of conditions and the following disclaimer in the
           documentation and/or other materials provided with the distribution.
        3. [Deleted; see ftp://ftp.cs.berkeley.edu/pub/4bsd/README.Impt.License.Change]
        4. Neither the name of the University nor the names of its contributors
           may be used to endorse or promote products derived from this software
           without specific prior written permission.

        THIS SOFTWARE IS PROVIDED BY THE REGENTS AND CONTRIBUTORS ``AS IS'' AND
        ANY EXPRESS OR IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE
        IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS FOR A PARTICULAR PURPOSE
        ARE DISCLAIMED.  IN NO EVENT SHALL THE REGENTS OR CONTRIBUTORS BE LIABLE
        FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL, EXEMPLARY, OR CONSEQUENTIAL
        DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE GOODS
        OR SERVICES; LOSS OF USE, DATA, OR PROFITS; OR BUSINESS INTERRUPTION)
        HOWEVER CAUSED AND ON ANY THEORY OF LIABILITY, WHETHER IN CONTRACT, STRICT
        LIABILITY, OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY
        OUT OF THE USE OF THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF
        SUCH DAMAGE.

   The cookies are short quotations from many authors, collected over decades; the package
   does not record the copyright status of individual quotations.

The weights, tokenizer and configuration files themselves are released with shoal under its
licence (Apache-2.0), as far as the above permits. No training text is included in this folder.
"""
    with open(os.path.join(out, 'LICENSE'), 'w', encoding='utf-8') as f:
        f.write(lic)


# ----------------------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument('--work', default='/tmp/train-demo')
    ap.add_argument('--out', default=os.path.join(REPO, 'models', 'demo'))
    ap.add_argument('--stage', choices=['all', 'data', 'train', 'save'], default='all',
                    help='data: corpus+tokenizer only; train: from the encoded data on; save: save+golden from the checkpoint')
    ap.add_argument('--steps', type=int, default=800)
    ap.add_argument('--batch', type=int, default=16)
    ap.add_argument('--seq-len', type=int, default=128)
    ap.add_argument('--lr', type=float, default=3e-3)
    ap.add_argument('--warmup', type=int, default=60)
    ap.add_argument('--bias-gamma', type=float, default=1e-3)
    ap.add_argument('--eval-every', type=int, default=200)
    ap.add_argument('--seed', type=int, default=0)
    ap.add_argument('--threads', type=int, default=int(os.environ['OMP_NUM_THREADS']))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    random.seed(args.seed)
    os.makedirs(args.work, exist_ok=True)
    os.makedirs(args.out, exist_ok=True)
    tok_path = os.path.join(args.work, 'merges.json')

    if args.stage in ('all', 'data'):
        train_docs, val_docs = build_corpus(args.work)
        t0 = time.time()
        merges = train_bpe([t for _, t in train_docs], NUM_MERGES)
        log(f'tokenizer: {len(merges)} merges in {time.time() - t0:.0f} s')
        with open(tok_path, 'w') as f:
            json.dump(merges, f)
        bpe = BPE([tuple(m) for m in merges])
        save_tokenizer(bpe, merges, args.out)
        tr = encode_docs(bpe, train_docs, args.seed + 2)
        va = encode_docs(bpe, val_docs, args.seed + 3)
        np.save(os.path.join(args.work, 'train_ids.npy'), tr)
        np.save(os.path.join(args.work, 'val_ids.npy'), va)
        chars = sum(len(t) for _, t in train_docs)
        log(f'encoded: {len(tr)} train tokens ({chars / len(tr):.2f} chars/token), {len(va)} validation tokens')
        if args.stage == 'data':
            return

    with open(tok_path) as f:
        bpe = BPE([tuple(m) for m in json.load(f)])
    ckpt = os.path.join(args.work, 'checkpoint.pt')
    stats_path = os.path.join(args.work, 'train_stats.json')
    if args.stage in ('all', 'train'):
        tr = np.load(os.path.join(args.work, 'train_ids.npy'))
        va = np.load(os.path.join(args.work, 'val_ids.npy'))
        model = DeepseekV3(CONFIG)
        init_weights(model, args.seed)
        n = sum(p.numel() for p in model.parameters())
        log(f'model: {n / 1e6:.2f} M parameters; {len(tr)} training tokens; {args.steps} steps of '
            f'{args.batch}x{args.seq_len} = {args.steps * args.batch * args.seq_len / 1e6:.1f} M tokens')
        stats = train(model, tr, va, args, bpe)
        stats.update({'steps': args.steps, 'batch': args.batch, 'seq_len': args.seq_len, 'lr': args.lr,
                      'train_tokens': int(len(tr)), 'val_tokens_total': int(len(va))})
        torch.save(model.state_dict(), ckpt)
        with open(stats_path, 'w') as f:
            json.dump(stats, f, indent=2)
        log(f'trained: validation loss {stats["val_loss"]:.3f} (mtp {stats["val_mtp_loss"]:.3f}) in {stats["train_seconds"] / 60:.1f} min')

    model = DeepseekV3(CONFIG)
    model.load_state_dict(torch.load(ckpt))
    n_params, size = save_model(model, args.out)
    log(f'saved {args.out}/model.safetensors: {n_params} parameters, {size} bytes')
    g = golden(args.out, bpe)
    # Quality check after the bf16 round trip.
    m2 = DeepseekV3(CONFIG)
    load_hf_state(m2, read_safetensors(os.path.join(args.out, 'model.safetensors')))
    m2.eval()
    va = np.load(os.path.join(args.work, 'val_ids.npy'))
    T = args.seq_len
    nval = min(64, (len(va) - 1) // (T + 1))
    vt = torch.from_numpy(va.astype(np.int64))
    vm, vmt = evaluate(m2, torch.stack([vt[i * (T + 1):(i + 1) * (T + 1)] for i in range(nval)]))
    log(f'bf16 weights: validation loss {vm:.3f} (ppl {math.exp(vm):.1f}), mtp {vmt:.3f}')
    with open(stats_path) as f:
        stats = json.load(f)
    with open(os.path.join(args.work, 'corpus.json')) as f:
        stats['documents'] = len(json.load(f)['train'])
    stats.update({'bf16_val_loss': vm, 'bf16_val_mtp_loss': vmt, 'parameters': n_params, 'safetensors_bytes': size})
    with open(stats_path, 'w') as f:
        json.dump(stats, f, indent=2)
    write_model_card(args.out, stats, g)
    for p in ['The Lord is', 'A wise man', 'Computers are']:
        log('sample:', repr(sample(m2, bpe, p, 40, seed=1)))


if __name__ == '__main__':
    main()
