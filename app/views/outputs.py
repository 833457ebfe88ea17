"""Outputs, dense vs pruned: per-token loss, next-token top-k, greedy continuations, batch metrics."""
from __future__ import annotations

import html

import pandas as pd
import streamlit as st

from ppcore import session

from .. import charts, messages
from ..batch import left_out_note
from ..glossary import explain
from ..result import Result
from ..state import demo, limits
from .controls import count_and_button
from .replay import lacking, needs_model


def token_table(r: Result) -> pd.DataFrame:
    """Per predicted token: dense and pruned loss, KL and top-1 agreement (also the CSV export). Empty for a replayed
    record without them."""
    a = r.analysis
    rows: list[dict] = []
    m = a.nll_mask
    if m is None or a.nll_dense is None or a.nll_pruned is None or a.kl is None or a.top1 is None:
        return pd.DataFrame(rows)
    for b in range(m.shape[0]):
        for t in range(m.shape[1]):
            if m[b, t] > 0:
                rows.append({"sample": b, "position": t + 1, "token": a.batch.labels[b][t + 1],
                             "loss_dense": float(a.nll_dense[b, t]), "loss_pruned": float(a.nll_pruned[b, t]),
                             "kl_dense_pruned": float(a.kl[b, t]), "top1_agree": int(a.top1[b, t])})
    return pd.DataFrame(rows)


TOKEN_FONT = "1.3rem"  # token texts, readable from the back of a room on a projector


def large(fragment: str) -> str:
    """HTML `fragment` (already escaped) in the projector-sized token font."""
    return f'<div style="font-size:{TOKEN_FONT};line-height:1.9">{fragment}</div>'


def render(r: Result, start_generation) -> None:
    """The view; `start_generation` None (a replay, without the model) shows a note in place of generation."""
    st.caption("Batch metrics are in the header: perplexity of both, KL(dense ‖ pruned) and top-1 agreement "
               "over every real position of the batch. Below, one sample at a time.",
               help=explain("perplexity", "KL", "top-1 agreement"))
    note = left_out_note(r.analysis.batch)
    if note:
        st.info(messages.clean(note), icon="✂️")
    _per_token(r)
    st.subheader("Greedy continuation")
    st.caption("Pruning is decided once on the prompt (the prefill) and the same heads and channels are reused for "
               "every generated token.")
    if start_generation is None:
        st.info(needs_model("Generating with both models"))
        return
    prompt = st.text_area("Prompt", value=r.analysis.prompt, key="gen_prompt", height=80,
                          max_chars=limits().text_chars if demo() else None)
    out = count_and_button("New tokens", limits().new_tokens, 20, "gen_tokens", "Generate with both", "gen_go",
                           lambda n: start_generation(prompt, n))
    g = r.generation
    if g is not None:
        if g.prompt != prompt:  # e.g. after a generation of the new prompt failed: say whose continuation this is
            out.caption("The continuation below is of an earlier prompt; press **Generate with both** for the one "
                        "in the box.")
        out.markdown(f"**Prompt:** {g.prompt}")
        out.markdown(f"**Dense:** …{g.dense.text}")
        out.markdown(f"**{r.analysis.cfg.method}:** …{g.pruned.text}")
        out.caption(generation_times(g, r.analysis.cfg.method))


def generation_times(g: session.GenerationPair, method: str) -> str:
    """The generation's times in words: reading the prompt and writing the new tokens, dense against `method`."""
    how = (f"median of {g.repeats} runs each after a warm-up, dense and {method} alternating" if g.repeats > 1
           else "one run each after a warm-up")
    if method == "dense":
        return (f"Reading the prompt took {g.dense.prefill_s:.3f} s and writing {g.dense.tokens} tokens "
                f"{g.dense.decode_s:.3f} s ({how}).")

    def vs(p: float, d: float) -> str:
        return f" ({p / d:.2f}x dense's time)" if d > 0 else ""

    read = (f"Reading the prompt (where {method} decides what to prune): dense {g.dense.prefill_s:.3f} s, {method} "
            f"{g.pruned.prefill_s:.3f} s{vs(g.pruned.prefill_s, g.dense.prefill_s)}.")
    if max(g.dense.tokens, g.pruned.tokens) <= 1:  # the first token comes out of reading the prompt: nothing to time
        # (a newcomer read "dense 0.000 s, pp 0.000 s (1.19x dense's time)" for one new token)
        return f"{read} The one new token comes with reading the prompt: there is no writing time to compare. " \
               f"Times: {how}."
    return (f"{read} Writing the new tokens: dense "
            f"{g.dense.decode_s:.3f} s, {method} {g.pruned.decode_s:.3f} s{vs(g.pruned.decode_s, g.dense.decode_s)}. "
            f"Times: {how}.")


@st.fragment
def _per_token(r: Result) -> None:
    """Per-token views for one sample; a fragment: switching sample or position reruns only this."""
    a = r.analysis
    st.subheader("Per-token loss")
    if a.nll_dense is None or a.nll_pruned is None:
        st.info(lacking("per-token losses (they are saved from schema 4, by the Export tab)"))
        return
    B = a.batch.ids.shape[0]
    b = st.selectbox("Sample", list(range(B)), key="out_sample",
                     format_func=lambda i: f"{i}: " + "".join(a.batch.tokens[i][:12]).strip()[:60] + "…")
    n = a.batch.lengths[b]
    toks = a.batch.tokens[b][:n]  # the running text
    labels = a.batch.labels[b][:n]  # each token alone: a part of a character as its bytes, as the candidates show
    dense = [None] + [float(v) for v in a.nll_dense[b, : n - 1]]
    pruned = [None] + [float(v) for v in a.nll_pruned[b, : n - 1]]
    diff = [None] + [p - d for p, d in zip(pruned[1:], dense[1:])]
    vmax = max([v for v in dense + pruned if v is not None] or [1.0])
    dmax = max([abs(v) for v in diff if v is not None] or [1.0])
    st.markdown("**Dense** (red = high loss on that token)")
    st.markdown(large(charts.colored_tokens(toks, dense, vmax, False)), unsafe_allow_html=True)
    st.markdown(f"**{a.cfg.method}**")
    st.markdown(large(charts.colored_tokens(toks, pruned, vmax, False)), unsafe_allow_html=True)
    st.markdown("**Difference** (red: pruned is worse, green: better)")
    st.markdown(large(charts.colored_tokens(toks, diff, dmax, True)), unsafe_allow_html=True)
    st.plotly_chart(charts.diff_bars(labels[1:], diff[1:], f"Sample {b}: loss difference per token"),
                    width="stretch", key="out_diff")
    st.subheader("Next-token top-k")
    if a.top_dense is None or a.top_pruned is None:  # a replay: records hold no top-k
        st.info(needs_model("The next-token top-k"))
        return
    c1, c2 = st.columns([3, 1])
    pos = c1.slider("After position", 0, n - 1, min(n - 1, n // 2), key="out_pos")
    k = c2.number_input("k", 1, session.TOP_K, 10, key="out_k",
                        help=f"up to {session.TOP_K}: the candidates kept per position")
    c1.markdown(large(html.escape(f"Context ends with: …{''.join(toks[max(0, pos - 8): pos + 1])!r}"
                                  + (f"; actual next token {labels[pos + 1]!r}" if pos + 1 < n else ""))),
                unsafe_allow_html=True)
    for col, (name, top) in zip(st.columns(2), (("dense", a.top_dense), (a.cfg.method, a.top_pruned))):
        rows = top.at(b, pos, int(k))
        col.markdown(f"**{name}**")
        col.dataframe(pd.DataFrame({"token": [repr(t) for t, _ in rows], "probability": [p for _, p in rows]}),
                      hide_index=True, width="stretch")
