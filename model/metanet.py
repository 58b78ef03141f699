"""MetaNet (Munkhdalai & Yu, ICML 2017, Algorithm 1) for one-shot classification.

Support side (once per task):
  1. d reads the embedding-loss gradients of T support examples and emits task-level fast
     weights Q* for the representation learner u (skipped by MetaNet-).
  2. m reads each support example's task-loss gradient of the base learner b and emits its
     example-level fast weights W*_i, row i of the memory M.
  3. u(Q, Q*) embeds each support example: row i of the memory index R.
Query side (per query x):
  4. r = u(Q, Q*, x); attention a = softmax(s * cos(r, R)); W* = a^T M.
  5. b(W, W*, x) gives logits over the task's K labels (layer augmentation on every layer).

Label slot k of a task uses row k of a fixed codebook as the slow output weights, so a task
may hold any number of labels (paper 4.2.1). The meta information is the gradient of a
one-vs-rest cross-entropy on the example's own label row, hence an example's fast weights
depend on that example alone and a memory grows one row at a time.

Every function takes any number of leading batch dimensions: a single task (support
[n, 1, H, W]) or a meta-batch of episodes (support [E, n, 1, H, W]) run the same code. Training,
evaluation, the server (``model/inference.py``) and the ONNX export (``model/onnx_graphs.py``) call
the same passes: ``build_memory`` / ``extend_memory`` on the support side, ``read_attention`` and
``query_logits`` (or ``classify_tasks`` for several tasks at once) on the query side.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import vmap

from model import cnn, fused_d
from model.cnn import Weights
from model.compact import FastWeightRows, RowLayout, Storage
from model.config import MetaNetConfig
from model.fast_weights import CoordinateLSTM, CoordinateMLP, flatten, unflatten
from model.meta_info import (
    embedding_gradients_ce,
    embedding_gradients_contrastive,
    example_gradients,
    preprocess_gradient,
)
from model.meta_table import PiecewiseLinearM
from model.novelty import nearest_key_similarity

LSTMState = tuple[torch.Tensor, torch.Tensor]  # (h, c), each [..., P, hidden]
MTables = tuple[PiecewiseLinearM, PiecewiseLinearM]  # m of the conv layers, m of the fc and output layers


@dataclass
class Memory:
    """A task's support-side state. n support examples, P flattened base-learner coordinates."""

    # M: [..., n, P] example-level fast weights of b's conv and fc layers (compact rows in serving)
    fast_weights: torch.Tensor | FastWeightRows
    fast_out: torch.Tensor  # [..., n, C] fast weights of each example's own output row
    labels: torch.Tensor  # [..., n] label index (0..K-1) of each example, int64
    label_codes: torch.Tensor  # [..., K] codebook row of each label, int64
    keys: torch.Tensor  # R: [..., n, C] L2-normalized memory index
    rep_task_weights: dict[str, torch.Tensor] | None  # Q* for u (None for MetaNet-)
    base_task_weights: dict[str, torch.Tensor] | None  # task-level fast weights for b (MetaNet+)
    rep_state: LSTMState | None = None  # d's state after the first T examples, to continue from
    base_state: LSTMState | None = None


@dataclass
class SparseAttention:
    """Attention restricted to each query's top-k memory rows (e.g. from a FAISS search)."""

    ids: torch.Tensor  # [q, k] memory rows, int64
    weights: torch.Tensor  # [q, k] softmax weights, rows sum to 1


@dataclass
class QueryAnswer:
    """The query side's answer for one task's queries (``MetaNet.classify_tasks``)."""

    logits: torch.Tensor  # [q, K]
    nearest: torch.Tensor  # [q] cosine of each query's key to its nearest memory key (model/novelty.py)


@dataclass
class QueryRows:
    """Some queries of one task, read from its memory: what the output head takes (``classify_tasks``)."""

    memory: Memory
    images: torch.Tensor  # [r, 1, H, W]
    fast_weights: torch.Tensor  # W* = a^T M: [r, P] per-query fast weights of b's conv and fc layers
    attention: torch.Tensor | SparseAttention  # [r, n] or sparse: what the output layer reads


class QueryBackend(Protocol):
    """What runs the query side's networks: ``MetaNet`` itself, or its ONNX export on ONNX Runtime
    (``model/onnx_backend.py``). ``MetaNet.classify_tasks`` schedules them."""

    def embed(self, x: torch.Tensor, rep_task_weights: dict[str, torch.Tensor] | None) -> torch.Tensor:
        """[q, C] L2-normalized query keys of one task (``MetaNet.embed``)."""
        ...

    def output_head(self, parts: list[QueryRows]) -> list[torch.Tensor]:
        """Logits [r, K] of each part (``MetaNet.output_head``)."""
        ...


@dataclass(frozen=True)
class MemoryFormat:
    """How inference builds and keeps a task's memory (``MetaNet.memory_format``)."""

    m_tables: MTables  # m of the conv layers and of the fc and output layers as exact tables
    layout: RowLayout  # rows of the flattened conv + fc fast weights (int8 scales per row)
    storage: Storage  # how M's rows are kept (model/compact.py)
    chunk_size: int  # support examples per vectorized pass (bounds the peak memory of a build)


class MetaNet(nn.Module):
    def __init__(self, config: MetaNetConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or MetaNetConfig()
        c, blocks, hidden = config.channels, config.num_blocks, config.meta_hidden
        self.base = nn.ParameterDict(cnn.init_weights(c, blocks))  # W: slow weights of b
        self.rep = nn.ParameterDict(cnn.init_weights(c, blocks))  # Q: slow weights of u
        self.m_conv = CoordinateMLP(hidden)  # Z: fast weights for conv layers
        self.m_fc = CoordinateMLP(hidden)  # Z: fast weights for fc and output layers
        self.d_rep = CoordinateLSTM(hidden) if config.variant != "minus" else None  # G
        self.d_base = CoordinateLSTM(hidden) if config.variant == "plus" else None
        self.log_attention_scale = nn.Parameter(torch.tensor(math.log(config.attention_scale_init)))
        # d's arithmetic in a lower precision (e.g. torch.bfloat16) under autocast; None: float32.
        # An engine setting for training speed (d is most of a CPU episode), off unless asked for.
        self.d_dtype: torch.dtype | None = None
        # One of fused_d.KERNELS. "auto": d by its fused kernel where it applies (float32 on a CPU,
        # ``model/fused_d.py``), otherwise as PyTorch operations; "torch": always the latter.
        self.d_kernel: str = "auto"
        self.register_buffer("base_codes", cnn.codebook(config.max_labels, c, seed=0), persistent=False)
        self.register_buffer("rep_codes", cnn.codebook(config.max_labels, c, seed=1), persistent=False)

    def compile_meta_learners(self, which: str = "all") -> None:
        """Compile m and d (per-coordinate networks over ~150k coordinates per example, the bulk
        of an episode's memory traffic) with ``torch.compile``, which fuses their elementwise work.

        which: "all" (m and d: fastest on a GPU), "d" (d only: fastest on a CPU, where compiled m
        measured slower) or "none". Where d runs by its fused kernel (float32 on a CPU), there is
        nothing of d to compile."""
        if which not in ("all", "d", "none"):
            raise ValueError(f"unknown compile choice {which!r}")
        if which == "all":
            self._m = torch.compile(self._m, dynamic=False)
        if which in ("all", "d"):
            self._d_steps = torch.compile(self._d_steps, dynamic=False)

    # ---- meta learners -------------------------------------------------------------------
    def _m(self, grads: dict[str, torch.Tensor], tables: MTables | None = None) -> dict[str, torch.Tensor]:
        """m(g) per coordinate of each layer's gradient, by the exact table of m (``model/meta_table.py``).

        tables: m's tables, (conv, fc); None builds them from m's current weights, differentiably."""
        m_conv, m_fc = tables or self.m_tables()
        return {name: (m_conv if name.startswith("conv") else m_fc)(g) for name, g in grads.items()}

    def m_tables(self) -> MTables:
        """m of the conv layers and of the fc and output layers as exact piecewise-linear tables
        (carrying autograd to m's weights when built with gradients enabled)."""
        k, relative = self.config.grad_clip_k, self.config.relative_fast_weights
        return PiecewiseLinearM(self.m_conv, k, relative), PiecewiseLinearM(self.m_fc, k, relative)

    def memory_format(
        self, storage: Storage, chunk_size: int, device: torch.device | str = "cpu"
    ) -> MemoryFormat:
        """How a served memory is built (``build_memory`` / ``extend_memory`` with ``form``): m as its
        exact table, M kept as ``storage`` rows, ``chunk_size`` support examples per pass."""
        with torch.no_grad():
            tables = tuple(table.to(device) for table in self.m_tables())
        return MemoryFormat(tables, RowLayout.of(dict(self.base)), storage, chunk_size)

    def _zero_gradient_fast_weight(self) -> torch.Tensor:
        """m's output for a zero gradient: every output row other than the example's own
        (zero when fast weights are relative to it)."""
        zero = preprocess_gradient(self.base_codes.new_zeros(1), self.config.grad_clip_k)
        if self.config.relative_fast_weights:
            return zero.new_zeros(())
        return self.m_fc(zero)[0]

    def _d(
        self, d: CoordinateLSTM, grads: dict[str, torch.Tensor], like: Weights, state: LSTMState | None
    ) -> tuple[dict[str, torch.Tensor], LSTMState]:
        """d reads grads {name: [..., t, *shape]} one example per step, continuing from ``state``
        (None: the zero state).

        ``like`` gives the unbatched shapes. Returns task-level fast weights {name: [..., *shape]}
        and the LSTM state after the last step.
        """
        batch = next(iter(grads.values())).dim() - next(iter(like.values())).dim()  # leading dims incl. t
        flat = torch.cat([g.flatten(batch) for g in grads.values()], dim=-1)  # [..., t, P]
        if self.d_is_fused(flat.device, flat.dtype):
            fast, state = fused_d.run(d, preprocess_gradient(flat, self.config.grad_clip_k), state)
        else:
            fast, state = self._d_steps(d, flat, state)
        return unflatten(fast, like), state

    def _d_steps(
        self, d: CoordinateLSTM, flat: torch.Tensor, state: LSTMState | None
    ) -> tuple[torch.Tensor, LSTMState]:
        """d as PyTorch operations (what ``compile_meta_learners`` compiles): gradients flat [..., t, P]
        -> fast weights [..., P] and the state after the last step."""
        meta = preprocess_gradient(flat, self.config.grad_clip_k)  # [..., t, P, 2]
        for step in meta.unbind(-3):
            state = d.step(step, state)
        return d.readout(state), state

    def d_is_fused(self, device: torch.device, dtype: torch.dtype = torch.float32) -> bool:
        """Whether d runs by its fused kernel on inputs of ``device`` and ``dtype`` (``d_kernel``)."""
        hidden = self.config.meta_hidden
        return self.d_kernel == "auto" and self.d_dtype is None and fused_d.applies(device, dtype, hidden)

    def _d_in_dtype(
        self, d: CoordinateLSTM, grads: dict[str, torch.Tensor], like: Weights, state: LSTMState | None
    ) -> tuple[dict[str, torch.Tensor], LSTMState]:
        """``_d`` with its products and gate arithmetic under autocast to ``d_dtype`` (when set), its
        fast weights and state handed back in float32."""
        if self.d_dtype is None:
            return self._d(d, grads, like, state)
        with torch.autocast(next(iter(grads.values())).device.type, dtype=self.d_dtype):
            fast, state = self._d(d, grads, like, state)
        return {name: w.float() for name, w in fast.items()}, (state[0].float(), state[1].float())

    def example_fast_weights(
        self, x: torch.Tensor, slots: torch.Tensor, form: MemoryFormat | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """m(Z, grad_W loss_task(b(W, x_i), y_i)) for every example (m by its exact table).

        x: [..., n, 1, H, W]; slots: [..., n] codebook rows of the examples' labels.

        Returns the conv+fc fast weights flattened [..., n, P] and the own-output-row fast
        weights [..., n, C].
        """
        grads = example_gradients(dict(self.base), self.base_codes[slots], x)
        fast = self._m(grads, None if form is None else form.m_tables)
        out = fast.pop("out")
        return flatten(fast, batch_dims=slots.dim()), out

    def rep_task_weights(
        self, x: torch.Tensor, slots: torch.Tensor, state: LSTMState | None = None
    ) -> tuple[dict[str, torch.Tensor] | None, LSTMState | None]:
        """Q* = d(G, {grad_Q loss_emb}) over support examples x (the first T of a task).

        Cross-entropy: d reads one example per step, continuing from ``state`` (its state after
        the task's earlier examples), so a growing task feeds only its new examples. Contrastive:
        d reads up to T pairs drawn among x, from scratch. Returns (Q*, state to continue from).
        """
        if self.d_rep is None:
            return None, None
        rep = dict(self.rep)
        if self.config.embedding_loss == "cross_entropy":
            grads = embedding_gradients_ce(rep, self.rep_codes[slots], x)
            return self._d_in_dtype(self.d_rep, grads, rep, state)
        # every task of a batch has the same label layout, so the pairs are the same positions
        layout = slots.reshape(-1, slots.shape[-1])[0]
        first, second, same = contrastive_pairs(layout, self.config.max_task_examples)
        grads = embedding_gradients_contrastive(
            rep,
            x[..., first, :, :, :],
            x[..., second, :, :, :],
            same.expand(*slots.shape[:-1], -1),
            self.config.contrastive_margin,
        )
        return self._d_in_dtype(self.d_rep, grads, rep, None)[0], None

    def base_task_weights(
        self, x: torch.Tensor, slots: torch.Tensor, state: LSTMState | None = None
    ) -> tuple[dict[str, torch.Tensor] | None, LSTMState | None]:
        """MetaNet+: task-level fast weights for b's conv and fc layers, read like Q*."""
        if self.d_base is None:
            return None, None
        base = dict(self.base)
        grads = example_gradients(base, self.base_codes[slots], x)
        grads.pop("out")
        return self._d_in_dtype(self.d_base, grads, base, state)

    # ---- representation and attention ----------------------------------------------------
    def embed(self, x: torch.Tensor, rep_task_weights: dict[str, torch.Tensor] | None) -> torch.Tensor:
        """r = u(Q, Q*, x), L2-normalized. x: [..., n, 1, H, W]; Q*: {name: [..., *shape]} -> [..., n, C].

        With ``config.signed_keys`` the embedding is u's fc output before its ReLU.
        """
        slow, relu_out = dict(self.rep), not self.config.signed_keys
        if rep_task_weights is None:
            h = cnn.features(x.reshape(-1, *x.shape[-3:]), slow, relu_out=relu_out)
            return F.normalize(h.reshape(*x.shape[:-3], -1), dim=-1)

        def embed_task(xt: torch.Tensor, task: dict[str, torch.Tensor]) -> torch.Tensor:
            return cnn.features(xt, slow, task, relu_out=relu_out)

        return F.normalize(over_batch(embed_task, x.dim() - 4)(x, rep_task_weights), dim=-1)

    def attention(self, cosine: torch.Tensor, shots: torch.Tensor) -> torch.Tensor:
        """softmax over (scaled) cosine similarity, balanced across labels.

        cosine: [..., q, n] (or top-k [q, k]); shots: same shape or broadcastable, the number of
        examples of each row's label. Each row's score is lowered by log(shots), so a label's
        total attention does not grow with how many examples it has (identical to the paper's
        softmax in the one-shot case).
        """
        return torch.softmax(self.log_attention_scale.exp() * cosine - shots.log(), dim=-1)

    @staticmethod
    def label_matrix(memory: Memory, dtype: torch.dtype) -> torch.Tensor:
        """[..., n, K] one-hot label of each memory row."""
        return label_matrix(memory.labels, memory.label_codes.shape[-1], dtype)

    @staticmethod
    def shots_per_row(memory: Memory) -> torch.Tensor:
        """[..., n] number of examples that share each memory row's label."""
        return shots_per_row(memory.labels, memory.label_codes.shape[-1], memory.keys.dtype)

    def label_attention(self, memory: Memory, attention: torch.Tensor) -> torch.Tensor:
        """[..., q, K] total attention on each label's rows: the memory's own vote (no base learner)."""
        return attention @ self.label_matrix(memory, attention.dtype)

    def read_attention(
        self,
        memory: Memory,
        query_keys: torch.Tensor | None,
        neighbors: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor | SparseAttention:
        """Attention of queries over the memory rows (Algorithm 1, line 17).

        query_keys: [..., q, C] from ``embed`` (unused with ``neighbors``). Dense: [..., q, n] over
        every row. With ``neighbors`` (ids [q, k] int64, cosines [q, k] of each query's nearest keys,
        e.g. from FAISS or ``torch.topk``), sparse attention over those rows only.
        """
        shots = self.shots_per_row(memory)
        if neighbors is None:
            return self.attention(query_keys @ memory.keys.transpose(-1, -2), shots.unsqueeze(-2))
        ids, cosines = neighbors
        return SparseAttention(ids, self.attention(cosines, shots[ids]))

    # ---- support and query passes ---------------------------------------------------------
    def build_memory(
        self,
        x: torch.Tensor,
        labels: torch.Tensor,
        label_codes: torch.Tensor,
        form: MemoryFormat | None = None,
    ) -> Memory:
        """Algorithm 1, lines 1-14. x: [..., n, 1, H, W] support images; labels: [..., n] in 0..K-1;
        label_codes: [..., K] codebook row of each label.

        form: None keeps M as a dense tensor [..., n, P] (training, any batch dimensions); a
        ``memory_format`` (one task, inference) builds it in chunks into compact rows, m by table."""
        slots = label_codes.gather(-1, labels)
        t = self.config.max_task_examples
        first_x, first_slots = x[..., :t, :, :, :], slots[..., :t]
        rep_task, rep_state = self.rep_task_weights(first_x, first_slots)
        base_task, base_state = self.base_task_weights(first_x, first_slots)
        fast, fast_out = self._support_rows(x, slots, None, form)
        if x.shape[-4] >= t:  # Q* is final: d's state is no longer needed
            rep_state = base_state = None
        return Memory(
            fast_weights=fast,
            fast_out=fast_out,
            labels=labels,
            label_codes=label_codes,
            keys=self._keys(x, rep_task, form),
            rep_task_weights=rep_task,
            base_task_weights=base_task,
            rep_state=rep_state,
            base_state=base_state,
        )

    def extend_memory(
        self,
        memory: Memory,
        x: torch.Tensor,
        labels: torch.Tensor,
        label_codes: torch.Tensor,
        support: torch.Tensor | None,
        form: MemoryFormat | None = None,
    ) -> Memory:
        """``memory`` with support examples x [m, 1, H, W] (labels [m] in 0..K-1) appended; one task.

        label_codes: [K] codebook rows of every label, old ones first; support: [n, 1, H, W] the
        memory's own support images (needed only while it holds fewer than T examples); form: as in
        ``build_memory`` (compact rows are appended to without copying the earlier ones). Only the
        new examples' fast weights are computed. While the memory held fewer than T examples, d
        reads the new ones (from its kept state) and every key is refreshed with the new Q*.
        """
        t, n_old = self.config.max_task_examples, memory.labels.shape[-1]
        slots = label_codes[labels]
        fast, fast_out = self._support_rows(x, slots, memory.fast_weights, form)
        all_labels = torch.cat([memory.labels, labels])
        rep_task, base_task = memory.rep_task_weights, memory.base_task_weights
        rep_state, base_state = memory.rep_state, memory.base_state
        if n_old < t:  # the new examples change Q*: d reads them, then every key is refreshed
            first = slice(0, t - n_old)
            all_x = torch.cat([support, x])
            if self.config.embedding_loss == "cross_entropy":
                rep_task, rep_state = self.rep_task_weights(x[first], slots[first], rep_state)
            else:  # pairs are drawn among all of the first T examples
                rep_task, rep_state = self.rep_task_weights(all_x[:t], label_codes[all_labels[:t]])
            base_task, base_state = self.base_task_weights(x[first], slots[first], base_state)
            keys = self._keys(all_x, rep_task, form)
        else:
            keys = torch.cat([memory.keys, self._keys(x, rep_task, form)])
        if len(all_labels) >= t:  # Q* is final: d's state is no longer needed
            rep_state = base_state = None
        return Memory(
            fast_weights=fast,
            fast_out=torch.cat([memory.fast_out, fast_out]),
            labels=all_labels,
            label_codes=label_codes,
            keys=keys,
            rep_task_weights=rep_task,
            base_task_weights=base_task,
            rep_state=rep_state,
            base_state=base_state,
        )

    def _support_rows(
        self,
        x: torch.Tensor,
        slots: torch.Tensor,
        rows: torch.Tensor | FastWeightRows | None,
        form: MemoryFormat | None,
    ) -> tuple[torch.Tensor | FastWeightRows, torch.Tensor]:
        """``rows`` (None: none yet) with the fast weights of support examples x [..., n, 1, H, W]
        appended. Returns (M, own-output-row fast weights [..., n, C] of x)."""
        if form is None:
            fast, out = self.example_fast_weights(x, slots)
            return (fast if rows is None else torch.cat([rows, fast])), out
        if rows is None:
            rows = FastWeightRows.empty(form.layout, form.storage, len(x), x.device)
        outs = []
        for chunk, chunk_slots in zip(x.split(form.chunk_size), slots.split(form.chunk_size), strict=True):
            fast, out = self.example_fast_weights(chunk, chunk_slots, form)
            rows = rows.appended(fast)
            outs.append(out)
        return rows, torch.cat(outs)

    def _keys(
        self, x: torch.Tensor, rep_task: dict[str, torch.Tensor] | None, form: MemoryFormat | None
    ) -> torch.Tensor:
        """Memory keys [..., n, C] of support images x (in chunks of ``form.chunk_size`` with a form)."""
        if form is None:
            return self.embed(x, rep_task)
        return torch.cat([self.embed(chunk, rep_task) for chunk in x.split(form.chunk_size)])

    def read_memory(self, memory: Memory, attention: torch.Tensor | SparseAttention) -> torch.Tensor:
        """W* = a^T M: per-query fast weights [..., q, P] (conv and fc layers, flattened).

        M is a tensor [..., n, P] or compact rows (``model.compact.FastWeightRows``, one task)."""
        if not isinstance(memory.fast_weights, torch.Tensor):
            if isinstance(attention, SparseAttention):
                return memory.fast_weights.read(attention.weights, attention.ids)
            return memory.fast_weights.read(attention)
        if isinstance(attention, SparseAttention):
            return torch.einsum("qk,qkp->qp", attention.weights, memory.fast_weights[attention.ids])
        return attention @ memory.fast_weights

    def base_features(
        self, x: torch.Tensor, fast_weights: torch.Tensor, base_task_weights: dict[str, torch.Tensor] | None
    ) -> torch.Tensor:
        """Augmented base learner to its fc output, every query with its own fast weights.

        x: [..., q, 1, H, W]; fast_weights: [..., q, P]; base_task_weights {name: [..., *shape]}
        -> [..., q, C]."""
        slow = dict(self.base)
        lead = x.shape[:-3]
        per_query = unflatten(fast_weights.reshape(-1, fast_weights.shape[-1]), slow)  # {name: [Q, *shape]}
        queries = x.reshape(-1, *x.shape[-3:])
        weight_sets = [slow, per_query]
        if base_task_weights is not None:
            tasks = len(lead) - 1  # task dims before the query dim (none for a single task: shared)
            weight_sets.append(
                {  # each query gets its task's weights: [*batch, *shape] -> [Q, *shape]
                    name: w.unsqueeze(tasks).expand(*lead, *w.shape[tasks:]).reshape(-1, *w.shape[tasks:])
                    for name, w in base_task_weights.items()
                }
                if tasks
                else base_task_weights
            )
        return cnn.features(queries, *weight_sets).reshape(*lead, -1)

    def output_logits(
        self, h: torch.Tensor, memory: Memory, attention: torch.Tensor | SparseAttention
    ) -> torch.Tensor:
        """Augmented output layer: slow codebook rows plus fast rows read from memory. h: [q, C] -> [q, K].

        Fast row k for query q is the sum over examples i of label k of a_qi * fast_out_i, plus
        m(0) weighted by the attention on every other example (their gradient on row k is zero).
        """
        num_labels = memory.label_codes.shape[-1]
        if isinstance(attention, SparseAttention):
            labels = memory.labels[attention.ids]  # [q, k]
            scores = torch.einsum("qc,qkc->qk", h, memory.fast_out[attention.ids])
            zeros = h.new_zeros(h.shape[0], num_labels)
            label_attention = zeros.scatter_add(1, labels, attention.weights)  # [q, K]
            own = zeros.scatter_add(1, labels, attention.weights * scores)
        else:
            label_of = self.label_matrix(memory, h.dtype)  # [..., n, K]
            label_attention = attention @ label_of
            own = (attention * (h @ memory.fast_out.transpose(-1, -2))) @ label_of
        others = self._zero_gradient_fast_weight() * (1 - label_attention) * h.sum(-1, keepdim=True)
        return h @ self.base_codes[memory.label_codes].transpose(-1, -2) + own + others

    def query_logits(
        self, x: torch.Tensor, memory: Memory, attention: torch.Tensor | SparseAttention
    ) -> torch.Tensor:
        """b(W, W*, x) with W* = a^T M. x: [q, 1, H, W]; attention: [q, n] or sparse -> logits [q, K]."""
        h = self.base_features(x, self.read_memory(memory, attention), memory.base_task_weights)
        return self.output_logits(h, memory, attention)

    def classify_tasks(
        self,
        memories: list[Memory],
        queries: list[torch.Tensor],
        neighbors: list[tuple[torch.Tensor, torch.Tensor] | None],
        chunk: int = 256,
        backend: QueryBackend | None = None,
    ) -> list[QueryAnswer]:
        """The query side for queries of several tasks (each a single task), batched across tasks.

        queries[i]: [q_i, 1, H, W] against memories[i]; neighbors[i]: None (dense attention) or its
        queries' top-k rows (see ``read_attention``). ``backend`` (default: the model itself; the ONNX
        Runtime one is ``model/onnx_backend.py``) supplies the query embedding and the output head; the
        attention and the memory read run here. The head runs over up to ``chunk`` queries of any tasks
        at a time (each query has its own fast weights W* [P] anyway, ~0.6 MB: the chunk bounds their
        memory). Returns per task its logits [q_i, K_i] and, from the same query keys (or neighbours),
        each query's cosine to its nearest memory key.
        """
        backend = backend or self
        keys = [
            None if near is not None else backend.embed(x, m.rep_task_weights)
            for m, x, near in zip(memories, queries, neighbors, strict=True)
        ]
        attentions = [
            self.read_attention(m, k, near) for m, k, near in zip(memories, keys, neighbors, strict=True)
        ]
        logits: list[list[torch.Tensor]] = [[] for _ in memories]
        pending: list[tuple[int, slice]] = []  # (task, rows) of the next pass of the head

        def run() -> None:
            parts = []
            for i, s in pending:
                attention = attention_rows(attentions[i], s)
                parts.append(
                    QueryRows(memories[i], queries[i][s], self.read_memory(memories[i], attention), attention)
                )
            for (i, _), part in zip(pending, backend.output_head(parts), strict=True):
                logits[i].append(part)
            pending.clear()

        for i, x in enumerate(queries):
            for start in range(0, len(x), chunk):
                if pending and memories[i].base_task_weights is not None and pending[-1][0] != i:
                    run()  # MetaNet+: task-level base weights differ per task, one task per pass
                pending.append((i, slice(start, start + chunk)))
                if sum(len(queries[j][s]) for j, s in pending) >= chunk:
                    run()
        if pending:
            run()
        return [
            QueryAnswer(torch.cat(parts), nearest_similarity(m, k, near))
            for parts, m, k, near in zip(logits, memories, keys, neighbors, strict=True)
        ]

    def output_head(self, parts: list[QueryRows]) -> list[torch.Tensor]:
        """The query side after the memory read, for rows of one or more tasks (one task for MetaNet+):
        b with each query's own fast weights in one pass over all rows, then each task's augmented
        output layer. Returns logits [r, K] per part."""
        h = self.base_features(
            torch.cat([p.images for p in parts]),
            torch.cat([p.fast_weights for p in parts]),
            parts[0].memory.base_task_weights,
        )
        return [
            self.output_logits(features, p.memory, p.attention)
            for features, p in zip(h.split([len(p.images) for p in parts]), parts, strict=True)
        ]

    def forward_with_attention(
        self, support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor, label_codes: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Episodes: support [..., n, 1, H, W] with labels [..., n]; query [..., q, 1, H, W].

        Returns (logits [..., q, K] of the full model, label attention [..., q, K]: the memory's
        vote alone, for attention-only accuracy)."""
        memory = self.build_memory(support, labels, label_codes)
        attention = self.read_attention(memory, self.embed(query, memory.rep_task_weights))
        return self.query_logits(query, memory, attention), self.label_attention(memory, attention)

    def forward(
        self, support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor, label_codes: torch.Tensor
    ) -> torch.Tensor:
        """Logits [..., q, K] of episodes (see ``forward_with_attention``)."""
        return self.forward_with_attention(support, labels, query, label_codes)[0]


def label_matrix(labels: torch.Tensor, num_labels: int, dtype: torch.dtype) -> torch.Tensor:
    """[..., n, K] one-hot of labels [..., n] in 0..K-1."""
    return (labels.unsqueeze(-1) == torch.arange(num_labels, device=labels.device)).to(dtype)


def shots_per_row(labels: torch.Tensor, num_labels: int, dtype: torch.dtype) -> torch.Tensor:
    """[..., n] number of rows that share each row's label (labels [..., n] in 0..K-1). O(n + K): a task
    of thousands of labels must not build its [n, K] label matrix on every query."""
    counts = labels.new_zeros(*labels.shape[:-1], num_labels, dtype=dtype)
    counts.scatter_add_(-1, labels, torch.ones_like(labels, dtype=dtype))  # [..., K]
    return counts.gather(-1, labels)


def nearest_similarity(
    memory: Memory, query_keys: torch.Tensor | None, neighbors: tuple[torch.Tensor, torch.Tensor] | None
) -> torch.Tensor:
    """[q] cosine of each query's key to its nearest memory key: over every key (query_keys [q, C]), or
    the best of its ``neighbors`` (ids, cosines [q, k]): exact when they come from an exact search."""
    if neighbors is None:
        return nearest_key_similarity(query_keys, memory.keys)
    return neighbors[1].amax(-1)


def attention_rows(attention: torch.Tensor | SparseAttention, rows: slice) -> torch.Tensor | SparseAttention:
    """The attention of some queries (rows of a [q, n] or sparse attention)."""
    if isinstance(attention, SparseAttention):
        return SparseAttention(attention.ids[rows], attention.weights[rows])
    return attention[rows]


def over_batch(fn, batch_dims: int):
    """``fn`` vmapped over ``batch_dims`` leading dimensions of every argument."""
    for _ in range(batch_dims):
        fn = vmap(fn)
    return fn


def contrastive_pairs(slots: torch.Tensor, count: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Up to ``count`` support pairs for the contrastive embedding loss, alternating positive and
    negative where possible; deterministic in the slots. Returns (first [T], second [T], same [T])."""
    n = slots.shape[0]
    i, j = torch.triu_indices(n, n, offset=1, device=slots.device)
    same = slots[i] == slots[j]
    positive, negative = torch.nonzero(same).flatten(), torch.nonzero(~same).flatten()
    half = min(count // 2, positive.numel())
    chosen = torch.cat([positive[:half], negative[: count - half]])
    return i[chosen], j[chosen], same[chosen].float()
