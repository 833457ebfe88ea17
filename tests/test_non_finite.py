"""Non-finite numbers (issue 9, kind 4): an fp16 model whose residual stream passes 65504 never gives a
NaN perplexity or a FLAP that prunes nothing; it gives one error naming the first layer, and advice."""
from __future__ import annotations

import pytest
import torch

from ppcore import NonFiniteError, PruneConfig, Pruner, token_nll, walk
from ppcore.calibrate import calibrate
from ppcore.cli import main
from ppcore.evaluate import evaluate
from ppcore.generate import generate
from tests.conftest import _finish, copy_default_tokenizer, tiny_llama

BLOWN_LAYER = 2


def _overflowing(dtype: torch.dtype, vocab: int = 128):
    """A tiny Llama whose layer-2 MLP output exceeds fp16's range (finite weights, finite in fp32)."""
    lm = tiny_llama() if vocab == 128 else None
    if lm is None:
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=96, intermediate_size=160,
                                             num_hidden_layers=4, num_attention_heads=6, num_key_value_heads=2,
                                             max_position_embeddings=256, tie_word_embeddings=False))
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 2:
                    p.normal_(0, 0.08)
        lm = _finish(model, "blown")
    mlp = lm.model.model.layers[BLOWN_LAYER].mlp
    with torch.no_grad():
        mlp.up_proj.weight.mul_(100)
        mlp.down_proj.weight.mul_(100)
        mlp.gate_proj.weight.mul_(10)
    lm.model.to(dtype)
    return _finish(lm.model, f"blown-{dtype}")


IDS = torch.randint(0, 128, (4, 16), generator=torch.Generator().manual_seed(0))


def test_non_finite_activations_name_the_first_layer_and_suggest_a_dtype():
    lm = _overflowing(torch.float16)
    for cfg in (PruneConfig(method="dense"), PruneConfig(method="pp", ratio=0.4, skip_layers=(0,), use_history=False)):
        with pytest.raises(NonFiniteError) as e:
            walk(lm.adapter, Pruner(lm.adapter, cfg), IDS)
        msg = str(e.value)
        assert f"decoder layer {BLOWN_LAYER} " in msg and "float16" in msg and "bfloat16" in msg
    # The same weights in float32 run, finite: the error is the dtype's range, as the message says.
    ok = _overflowing(torch.float32)
    res = walk(ok.adapter, Pruner(ok.adapter, PruneConfig(method="dense")), IDS)
    nll, m = token_nll(ok.adapter, res.hidden, IDS, res.valid)
    assert bool(torch.isfinite(nll).all())


def test_non_finite_calibration_statistics_are_refused_so_flap_never_prunes_nothing():
    lm = _overflowing(torch.float16)
    with pytest.raises(NonFiniteError, match=f"layer {BLOWN_LAYER} "):
        calibrate(lm, IDS, 2, cache=False, progress=False)


def test_non_finite_perplexity_is_never_reported():
    lm, ok = _overflowing(torch.float16), _overflowing(torch.float32)
    calib = calibrate(ok, IDS, 2, cache=False, progress=False)
    for method in ("dense", "pp", "flap", "wanda-sp"):
        cfg = PruneConfig(method=method, ratio=0.4, skip_layers=(0,), mlp_multiple=8)
        with pytest.raises(NonFiniteError):
            evaluate(lm, cfg, IDS, 2, calib if cfg.needs_calibration else None, progress=False)


def test_non_finite_logits_are_an_error_not_a_nan_loss():
    lm = tiny_llama()
    with torch.no_grad():
        lm.model.lm_head.weight.mul_(3e5)  # logits far past fp16's range
    lm.model.half()
    lm = _finish(lm.model, "loud-head")
    res = walk(lm.adapter, Pruner(lm.adapter, PruneConfig(method="dense")), IDS)
    with pytest.raises(NonFiniteError, match="logits"):
        token_nll(lm.adapter, res.hidden, IDS, res.valid)


def test_non_finite_generation_is_an_error():
    lm = _overflowing(torch.float16)
    with pytest.raises(NonFiniteError):
        generate(lm.adapter, Pruner(lm.adapter, PruneConfig(method="dense")), [[5, 6, 7]], max_new_tokens=3)


def test_non_finite_eval_from_the_command_line_exits_2(tmp_path, capsys):
    """`eval` of an fp16 checkpoint that overflows: exit 2 and one line naming the layer, never ppl=nan."""
    lm = _overflowing(torch.float32, vocab=49152)  # the default tokenizer's vocabulary
    folder = tmp_path / "blown"
    lm.model.save_pretrained(folder)
    copy_default_tokenizer(folder)
    common = ["eval", "--model", str(folder), "--device", "cpu", "--method", "flap", "--ratio", "0.4",
              "--seq-len", "16", "--batch-size", "2", "--batches", "1", "--calib-seqs", "2", "--quiet",
              "--skip-layers", "0", "--mlp-multiple", "8", "--cache-dir", str(tmp_path / "cache")]
    capsys.readouterr()  # saving printed its own progress
    assert main(common + ["--dtype", "float16"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"layer {BLOWN_LAYER} " in err and "bfloat16" in err
    assert main(common + ["--dtype", "float32"]) == 0
    out = capsys.readouterr().out
    assert "ppl=" in out and "nan" not in out


def test_non_finite_logits_in_generation_are_an_error():
    """An fp16 LM head can overflow on a finite residual: generation must not pick tokens from inf logits."""
    lm = tiny_llama()
    with torch.no_grad():
        lm.model.lm_head.weight.mul_(6e4)
    lm.model.half()
    lm = _finish(lm.model, "loud-head-gen")
    with pytest.raises(NonFiniteError, match="new token 1 "):
        generate(lm.adapter, Pruner(lm.adapter, PruneConfig(method="dense")), [[5, 6, 7, 8, 9, 10]], max_new_tokens=4)


def test_non_finite_batch_leaves_no_pp_history_to_decide_from():
    """PP's history took the failed batch's EMA (inf/NaN at and after the bad layer): the same pruner then
    refuses every batch, instead of ranking heads by NaN scores on a batch that happens to stay finite."""
    lm, ok = _overflowing(torch.float16), _overflowing(torch.float32)
    calib = calibrate(ok, IDS, 2, cache=False, progress=False)
    pruner = Pruner(lm.adapter, PruneConfig(method="pp", ratio=0.4, skip_layers=(0,), mlp_multiple=8), calib)
    with pytest.raises(NonFiniteError, match=f"layer {BLOWN_LAYER} "):
        walk(lm.adapter, pruner, IDS)
    assert not all(bool(torch.isfinite(h).all()) for h in pruner.history.states.values())
    with pytest.raises(NonFiniteError, match="build a new Pruner"):
        walk(lm.adapter, pruner, IDS[:, :4])
