"""Zero-shot view: one commonsense task, dense against the analysed method, through lm-evaluation-harness's own
prompts and metrics (docs/zeroshot.md): accuracy of both, and the questions where they picked differently."""
from __future__ import annotations

from typing import Callable

import pandas as pd
import streamlit as st

from ppcore import session

from ..result import Result
from ..state import limits


def disagreement_table(z) -> pd.DataFrame:
    """One row per document where the two runs picked differently: question, choices (numbered), the right one
    and each run's pick."""
    rows = []
    for d in z.disagreements:
        rows.append({"question": d.question.strip(), "choices": "\n".join(f"{i}: {c.strip()}" for i, c in
                                                                        enumerate(d.choices)),
                     "right": d.gold, "dense picked": d.dense, f"{z.method} picked": d.pruned})
    return pd.DataFrame(rows, columns=["question", "choices", "right", "dense picked", f"{z.method} picked"])


def render(r: Result, start: Callable[[str, int], None]) -> None:
    a = r.analysis
    method = a.cfg.method if a.cfg.method != "dense" else "pp"
    st.caption(f"Zero-shot accuracy on a commonsense task, as in the paper's second table: each question's answer "
               f"choices are scored by log-likelihood (lm-evaluation-harness's own prompts and metrics, on the "
               f"validation split shipped offline), by the unpruned model and by {method} at ratio {a.ratio:.2f}, "
               "in batches of 20 requests (the batch PP's probe sees). The paper used its own prompts and other "
               "splits: compare the ordering of methods with it, not the values.")
    c1, c2, c3 = st.columns([2, 1, 1])
    task = c1.selectbox("Task", list(session.ZEROSHOT_TASKS), key="zs_task")
    n = c2.number_input("Documents", 1, limits().zeroshot_docs, min(50, limits().zeroshot_docs), key="zs_docs",
                        help="the first documents of the task's validation split; each is scored by both models")
    if c3.button("Run the task", key="zs_go"):
        start(task, int(n))
    z = r.zeroshot
    if z is None:
        st.info("Press **Run the task**. About 2-3 s per document on 2 CPU cores for both models together.")
        return
    st.markdown(f"**{z.task}**, first {z.documents} documents: dense against **{z.method}** at ratio {z.ratio:.2f}.")
    cols = st.columns(4)
    for i, m in enumerate(("acc", "acc_norm")):
        if m in z.dense:
            cols[2 * i].metric(f"{m}, dense", f"{z.dense[m]:.1%}")
            cols[2 * i + 1].metric(f"{m}, {z.method}", f"{z.pruned[m]:.1%}", f"{z.pruned[m] - z.dense[m]:+.1%}",
                                   help="acc: the choice with the highest log-likelihood; acc_norm: per byte of the "
                                        "choice's text (lm-eval's definitions)")
    dis = disagreement_table(z)
    st.subheader(f"Where the two disagree: {len(dis)} of {z.documents} documents")
    if dis.empty:
        st.info("Both models picked the same choice on every document.")
    else:
        st.dataframe(dis, hide_index=True, width="stretch")
