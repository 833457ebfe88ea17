"""Plain-words explanations of every term the pages use, for students who have not read the paper.

One entry per term, one name per quantity (the names of docs/algorithm.md). Views pass `explain(...)` as a
widget's or metric's `help=` (the "?" tooltip) and draw `GLOSSARY` in the sidebar's glossary expander.
"""
from __future__ import annotations

GLOSSARY: dict[str, str] = {
    "residual importance": (
        "How loud a token is as it enters a block: the length (L2 norm) of its residual-stream vector. Tokens "
        "with a large norm shape the block's output most, so PP probes them first. The first token of a sequence "
        "often has a huge norm in deep layers (an 'attention sink') without carrying much meaning."),
    "attention sink": (
        "A token (usually the first) that deep layers use as a parking place for attention: its residual norm "
        "is tens of times larger than any other token's. It dominates a linear colour scale, so the importance "
        "map can hide it or use a log scale."),
    "probe": (
        "A small piece of the batch, a few tokens of a few samples, that PP runs through the front of a block "
        "with all its weights before deciding what to prune. By default half of the tokens, then 5% of the "
        "samples (at least one sample and two tokens)."),
    "probe tokens": (
        "The token positions PP picks for its probe: the positions whose residual importance, combined over "
        "every sample of the batch (the L2 norm down the column), is largest. So a position can be picked "
        "although it is not the tallest bar of one particular sample."),
    "probe samples": (
        "Among the batch's samples, those with the largest residual importance at the probe tokens: the probe "
        "runs these rows only."),
    "history": (
        "What PP remembers of earlier batches: for every position and channel, the mean squared activation at "
        "the input of the block's last projection. It starts from the calibration data and is updated after "
        "every batch by an exponential moving average (EMA)."),
    "EMA": (
        "Exponential moving average: new history = 0.99 x old history + 0.01 x this batch's value, only for the "
        "channels that were kept. Old batches fade slowly; pruned channels keep their old value."),
    "fusion": (
        "How PP mixes what the probe saw (P) with the history (G), per position and channel: weight "
        "a = P / (P + G), fused = a x P + (1 - a) x G. Where the probe sees much more energy than the history "
        "expects, the probe wins; where it sees less, the history wins."),
    "fusion weight": (
        "a = P / (P + G + 0.000001): the weight the fusion gives the probe at one position and channel, between "
        "0 (the history alone) and 1 (the probe alone). The pages show its mean over the probe's positions (and "
        "over a head's channels)."),
    "energy": (
        "The squared activation at the input of a block's last projection (o_proj for attention, down_proj for "
        "the MLP), summed over the probe's positions: how much signal a head or channel carried."),
    "PPsp": (
        "Probe Pruning's score for a unit: energy x weight size. For an MLP channel: fused energy x "
        "sqrt(sum of its output weights to the fourth power). For a head: the same, combined over the head's "
        "channels (square root of the sum of energy^2 x weight^4 terms). The lowest-scoring units are pruned."),
    "weight factor": (
        "The static half of the PPsp score: sqrt(sum of the unit's output weights to the fourth power) from the "
        "block's last projection. It never changes between batches."),
    "kept heads": (
        "The attention heads (and MLP channels) that survive a decision; the full batch then runs on these "
        "weights only."),
    "cut-off": (
        "The score of the last unit that was kept: units below it are pruned. A unit's rank says how far it was "
        "from the cut-off."),
    "oracle": (
        "'fullbatch': the same score as PP but computed from the whole batch instead of a probe, with no "
        "history. It is what PP tries to approximate cheaply, and costs more than not pruning at all."),
    "Wanda-sp": (
        "A static baseline: decides once, from calibration data, by |weight| x activation size, and uses the "
        "same heads and channels for every batch."),
    "FLAP": (
        "A static baseline: decides once from calibration data by how much each channel's activation fluctuates, "
        "chooses how much to prune per layer globally, and adds a bias that compensates the removed channels."),
    "ppsp-calib": (
        "A static variant of PP's own score: PPsp computed once from the calibration data's energies, with no probe "
        "and no history, and the same heads and channels kept for every batch. It shows what probing each batch "
        "adds."),
    "Jaccard": (
        "Overlap of two keep-sets: shared units / units in either. 1.0 = the same heads or channels kept, "
        "0 = nothing in common."),
    "KL": (
        "KL(dense || pruned), in nats: how far the pruned model's next-token probabilities are from the "
        "unpruned model's, averaged over positions. 0 = identical predictions."),
    "top-1 agreement": (
        "The share of positions where the pruned model's most likely next token is the unpruned model's."),
    "perplexity": (
        "exp(mean loss per token): roughly how many tokens the model hesitates between. Lower is better; "
        "pruning usually raises it."),
    "FLOPs": (
        "Floating-point operations: the arithmetic a forward pass does. 'FLOPs / dense' is the pruned run's "
        "count over the unpruned one's; it predicts the time saved only when arithmetic, not overheads, "
        "dominates (large batches on a GPU)."),
    "PRR": (
        "Performance-runtime ratio: perplexity added per unit fraction of runtime saved, "
        "(ppl pruned - ppl dense) / (1 - time pruned / time dense). Lower is better; n/a when a method "
        "saved no time."),
    "ablation": (
        "An experiment that changes one part of a method and keeps everything else, to see what that part is worth: "
        "here PP with its history, probe, score, fusion or block ratios changed, one setting at a time, on the same "
        "batch, each variant against PP itself (the row marked (PP))."),
    "Jaccard with the oracle": (
        "Per layer, the Jaccard overlap of a variant's kept heads (or MLP channels) with those the oracle (the same "
        "score on the whole batch) keeps on the same batch; the table gives its mean over the pruned layers. 1.0 = "
        "the variant keeps exactly what the oracle keeps: its cheap probe found the same units."),
    "fixed fusion": (
        "An ablation of PP's fusion: instead of weighting the probe by how much energy it sees, every position and "
        "channel gets the same blend X x probe + (1 - X) x history. X = 1 is the probe alone, X near 0 the history "
        "alone; PP's own fusion is importance-scaled."),
    "block ratios": (
        "Attention and the MLP pruned at ratios of their own (averaged over all layers, like the ratio) instead of "
        "both at the ratio: an ablation of where the pruning is spent. The same nominal ratio split differently does "
        "not remove the same FLOPs."),
    "ratio": (
        "The pruning ratio asked for: the share of heads and MLP channels to remove in the pruned layers, "
        "raised a little (r_eff) so that the whole model loses that share when some layers are skipped."),
}


def explain(*terms: str) -> str:
    """The entries of `terms`, one paragraph each, for a `help=` tooltip. KeyError for an unknown term (a
    misspelt name fails the test that draws every view, not silently)."""
    return "\n\n".join(f"**{t}**: {GLOSSARY[t]}" for t in terms)
